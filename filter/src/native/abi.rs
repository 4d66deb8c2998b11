//! A hand-written binding of the parts of Envoy's dynamic-module ABI the filter uses
//! (`source/extensions/dynamic_modules/abi/abi.h`, ABI version [`ABI_VERSION`], Envoy 1.40),
//! grown from the spike's (`tests/native-noop`). Envoy's Rust SDK is not on crates.io and is not
//! vendored: this is the whole contract, in one file.
//!
//! Two directions:
//! - **Event hooks** (`envoy_dynamic_module_on_*`): functions the module exports and Envoy calls,
//!   defined in `module.rs` with the pointer and status types below.
//! - **Callbacks** (`envoy_dynamic_module_callback_*`): functions the Envoy executable exports.
//!   They are not linked: [`Callbacks::resolve`] looks every one up in the running process
//!   (`dlsym`) when Envoy loads the module, so a host that lacks one refuses the load with a
//!   message naming it, instead of the dynamic linker's `undefined symbol` or a crash on first
//!   use. Each was checked present in the pinned binary (`nm -D`).
//!
//! On x86-64 and aarch64 a `{pointer, length}` struct passed by value travels in two integer
//! registers, exactly like the C header's `envoy_dynamic_module_type_*_buffer` structs; C enums
//! are `int`s.

use core::ffi::{CStr, c_char, c_void};

/// The ABI version this binding was written against, returned by
/// `envoy_dynamic_module_on_program_init`. Envoy 1.40 logs `Dynamic module ABI version v0.2.0
/// matched.`, or on a mismatch only a warning: the integration tests require the match.
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// Envoy's `DynamicModuleHttpFilterConfig*`, opaque to the module.
pub type ConfigEnvoyPtr = *mut c_void;
/// The module's per-config object, opaque to Envoy; null rejects the config.
pub type ConfigModulePtr = *const c_void;
/// Envoy's `DynamicModuleHttpFilter*` for one stream, opaque to the module.
pub type FilterEnvoyPtr = *mut c_void;
/// The module's per-stream object, opaque to Envoy.
pub type FilterModulePtr = *const c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const NULL: EnvoyBuffer = EnvoyBuffer { ptr: core::ptr::null(), length: 0 };

    /// A copy of the bytes, or None for Envoy's `{NULL, 0}`.
    ///
    /// # Safety
    /// `ptr` must point at `length` readable bytes (Envoy's promise for a buffer it just filled,
    /// until the stream's next mutation).
    pub unsafe fn to_vec(self) -> Option<Vec<u8>> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.as_slice() }.map(<[u8]>::to_vec)
    }

    /// The bytes, borrowed, or None for Envoy's `{NULL, 0}`.
    ///
    /// # Safety
    /// As for [`EnvoyBuffer::to_vec`], for as long as the slice is used.
    pub unsafe fn as_slice<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: the caller's promise above.
        Some(unsafe { core::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) })
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes the module owns; Envoy copies them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub const NULL: ModuleBuffer = ModuleBuffer { ptr: core::ptr::null(), length: 0 };

    /// Borrows `bytes` for one call (Envoy copies what it keeps).
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr().cast(), length: bytes.len() }
    }
}

/// `envoy_dynamic_module_type_module_http_header`: a header of a local reply or a callout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header of a callout's answer, Envoy's bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key: EnvoyBuffer,
    pub value: EnvoyBuffer,
}

/// `envoy_dynamic_module_type_http_callout_init_result`: 0 is success (the others: missing
/// required headers, cluster not found, duplicate id, cannot create the request, which is also
/// what an answer delivered inline, before the call returned, looks like).
pub type CalloutInitResult = u32;
pub const CALLOUT_INIT_SUCCESS: CalloutInitResult = 0;
/// `envoy_dynamic_module_type_http_callout_result`: 0 is an answer; 1 reset; 2 too large.
pub type CalloutResult = u32;
pub const CALLOUT_SUCCESS: CalloutResult = 0;

/// `envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr`, Envoy's object.
pub type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type`.
pub type HeaderType = u32;
pub const REQUEST_HEADERS: HeaderType = 0;
pub const RESPONSE_HEADERS: HeaderType = 2;

/// `envoy_dynamic_module_type_http_body_type`: the chunk this callback brought ("received") or
/// what earlier callbacks left in Envoy's buffer ("buffered", after `StopIterationAndBuffer`).
pub type BodyType = u32;
pub const RECEIVED_REQUEST_BODY: BodyType = 0;
pub const BUFFERED_REQUEST_BODY: BodyType = 1;
pub const RECEIVED_RESPONSE_BODY: BodyType = 2;

/// `envoy_dynamic_module_type_attribute_id` (Envoy's attribute list, in order).
pub type AttributeId = u32;
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: AttributeId = 16;
pub const ATTRIBUTE_SOURCE_ADDRESS: AttributeId = 24;

/// `envoy_dynamic_module_type_log_level`.
pub type LogLevel = u32;
pub const LOG_TRACE: LogLevel = 0;
pub const LOG_DEBUG: LogLevel = 1;
pub const LOG_INFO: LogLevel = 2;
pub const LOG_WARN: LogLevel = 3;
pub const LOG_ERROR: LogLevel = 4;
pub const LOG_CRITICAL: LogLevel = 5;

/// `envoy_dynamic_module_type_metrics_result`: 0 is success.
pub type MetricsResult = u32;
pub const METRICS_SUCCESS: MetricsResult = 0;

/// The `envoy_dynamic_module_type_on_http_filter_*_status` enums, which Envoy casts to its own
/// `FilterHeadersStatus` / `FilterDataStatus`: `Continue` is 0 in each; 1 is `StopIteration`
/// for headers and `StopIterationAndBuffer` for bodies.
pub type FilterStatus = u32;
pub const CONTINUE: FilterStatus = 0;
pub const HEADERS_STOP_ITERATION: FilterStatus = 1;
pub const BODY_STOP_ITERATION_AND_BUFFER: FilterStatus = 1;

/// Declares the callbacks: their C signatures (abi.h at v0.2.0), the struct that holds them,
/// and [`Callbacks::resolve`].
macro_rules! callbacks {
    ($($(#[$doc:meta])* $field:ident: fn($($arg:ty),*) $(-> $ret:ty)? = $symbol:literal;)*) => {
        /// The host callbacks the module calls, resolved once at load.
        #[derive(Clone, Copy)]
        pub struct Callbacks {
            $($(#[$doc])* pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Callbacks {
            /// Looks up every callback the module uses; the first missing one is the error.
            pub fn resolve() -> Result<Callbacks, String> {
                Ok(Callbacks {
                    $($field: {
                        let found = lookup($symbol)?;
                        // SAFETY: `found` is the non-null address of Envoy's exported C function
                        // of this signature (abi.h, ABI v0.2.0; present in the pinned binary); a
                        // data pointer and a function pointer have the same size and
                        // representation on every target Envoy supports (as POSIX requires for
                        // dlsym).
                        unsafe {
                            core::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(found)
                        }
                    },)*
                })
            }
        }
    };
}

callbacks! {
    /// The `index`-th value of a header into `result` (`{NULL, 0}` when absent); the number of
    /// values into the last argument unless it is null.
    get_header: fn(FilterEnvoyPtr, HeaderType, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool
        = c"envoy_dynamic_module_callback_http_get_header";
    /// Adds a value to a header (copied), keeping any it has.
    add_header: fn(FilterEnvoyPtr, HeaderType, ModuleBuffer, ModuleBuffer) -> bool
        = c"envoy_dynamic_module_callback_http_add_header";
    /// How many headers a map holds (each value of a repeated header counts).
    get_headers_size: fn(FilterEnvoyPtr, HeaderType) -> usize
        = c"envoy_dynamic_module_callback_http_get_headers_size";
    /// Fills an array of that many entries with the map's headers (Envoy's bytes).
    get_headers: fn(FilterEnvoyPtr, HeaderType, *mut EnvoyHttpHeader) -> bool
        = c"envoy_dynamic_module_callback_http_get_headers";
    /// Replaces every value of a header (copied); a null value removes it.
    set_header: fn(FilterEnvoyPtr, HeaderType, ModuleBuffer, ModuleBuffer) -> bool
        = c"envoy_dynamic_module_callback_http_set_header";
    /// How many chunks a body has (0 when there is none).
    get_body_chunks_size: fn(FilterEnvoyPtr, BodyType) -> usize
        = c"envoy_dynamic_module_callback_http_get_body_chunks_size";
    /// A body's length in bytes (0 when there is none).
    get_body_size: fn(FilterEnvoyPtr, BodyType) -> usize
        = c"envoy_dynamic_module_callback_http_get_body_size";
    /// Fills an array of that many buffers with the body's chunks.
    get_body_chunks: fn(FilterEnvoyPtr, BodyType, *mut EnvoyBuffer) -> bool
        = c"envoy_dynamic_module_callback_http_get_body_chunks";
    append_body: fn(FilterEnvoyPtr, BodyType, ModuleBuffer) -> bool
        = c"envoy_dynamic_module_callback_http_append_body";
    drain_body: fn(FilterEnvoyPtr, BodyType, usize) -> bool
        = c"envoy_dynamic_module_callback_http_drain_body";
    /// True when the chunk this body callback brought is the buffer itself (a filter before
    /// this one buffered the body and resumed): read it once, not twice.
    received_buffered_request_body: fn(FilterEnvoyPtr) -> bool
        = c"envoy_dynamic_module_callback_http_received_buffered_request_body";
    /// A local reply: status, headers, body, and the response code details.
    send_response: fn(FilterEnvoyPtr, u32, *const ModuleHttpHeader, usize, ModuleBuffer, ModuleBuffer)
        = c"envoy_dynamic_module_callback_http_send_response";
    /// Makes the router choose the route again (the filter's headers choose the cluster).
    clear_route_cache: fn(FilterEnvoyPtr)
        = c"envoy_dynamic_module_callback_http_clear_route_cache";
    /// Lets a stream the filter stopped go on (headers and buffered body).
    continue_decoding: fn(FilterEnvoyPtr)
        = c"envoy_dynamic_module_callback_http_filter_continue_decoding";
    get_attribute_string: fn(FilterEnvoyPtr, AttributeId, *mut EnvoyBuffer) -> bool
        = c"envoy_dynamic_module_callback_http_filter_get_attribute_string";
    /// Envoy's log, under its `dynamic_modules` logger.
    log: fn(LogLevel, ModuleBuffer)
        = c"envoy_dynamic_module_callback_log";
    /// A counter (no labels), defined while the config is created; its id into the last argument.
    define_counter: fn(ConfigEnvoyPtr, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> MetricsResult
        = c"envoy_dynamic_module_callback_http_filter_config_define_counter";
    increment_counter: fn(FilterEnvoyPtr, usize, *const ModuleBuffer, usize, u64) -> MetricsResult
        = c"envoy_dynamic_module_callback_http_filter_increment_counter";
    /// An HTTP request to a cluster for one stream (key lookups); its id into the second
    /// argument. The answer comes to `on_http_filter_http_callout_done` on the stream's thread.
    http_callout: fn(FilterEnvoyPtr, *mut u64, ModuleBuffer, *const ModuleHttpHeader, usize, ModuleBuffer, u64) -> CalloutInitResult
        = c"envoy_dynamic_module_callback_http_filter_http_callout";
    /// The same from a config, on the main thread (the singleton's calls); the answer comes to
    /// `on_http_filter_config_http_callout_done`.
    config_http_callout: fn(ConfigEnvoyPtr, *mut u64, ModuleBuffer, *const ModuleHttpHeader, usize, ModuleBuffer, u64) -> CalloutInitResult
        = c"envoy_dynamic_module_callback_http_filter_config_http_callout";
    /// A handle that posts events to the main thread (`on_http_filter_config_scheduled`) from
    /// any thread.
    config_scheduler_new: fn(ConfigEnvoyPtr) -> SchedulerPtr
        = c"envoy_dynamic_module_callback_http_filter_config_scheduler_new";
    config_scheduler_commit: fn(SchedulerPtr, u64)
        = c"envoy_dynamic_module_callback_http_filter_config_scheduler_commit";
    config_scheduler_delete: fn(SchedulerPtr)
        = c"envoy_dynamic_module_callback_http_filter_config_scheduler_delete";
    /// A counter of the config, incremented outside any stream (the singleton's).
    config_increment_counter: fn(ConfigEnvoyPtr, usize, *const ModuleBuffer, usize, u64) -> MetricsResult
        = c"envoy_dynamic_module_callback_http_filter_config_increment_counter";
}

/// Headers (of a callout or a local reply) as Envoy's header structs, borrowing `headers`.
fn module_headers<V: AsRef<[u8]>>(headers: &[(&str, V)]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHttpHeader {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ref().as_ptr().cast(),
            value_length: v.as_ref().len(),
        })
        .collect()
}

/// The signature both callout callbacks share (a stream's or a config's pointer first).
type CalloutFn = unsafe extern "C" fn(
    *mut c_void,
    *mut u64,
    ModuleBuffer,
    *const ModuleHttpHeader,
    usize,
    ModuleBuffer,
    u64,
) -> CalloutInitResult;

/// Starts a callout with `call` on `owner`; its id, or None if Envoy could not start it.
///
/// # Safety
/// `owner` is the live object `call` takes (a stream's for the stream callout, a config's for
/// the config callout), used on its thread.
unsafe fn callout(
    call: CalloutFn,
    owner: *mut c_void,
    cluster: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout_ms: u64,
) -> Option<u64> {
    let headers = module_headers(headers);
    let mut id = 0u64;
    // SAFETY: the caller's promise for `owner`; `id` is writable; Envoy copies the cluster name,
    // headers and body before returning.
    let result = unsafe {
        call(
            owner,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            headers.as_ptr(),
            headers.len(),
            ModuleBuffer::of(body),
            timeout_ms,
        )
    };
    (result == CALLOUT_INIT_SUCCESS).then_some(id)
}

/// A callout's HTTP status, if an answer was delivered (None: reset, timed out, not sent).
pub fn callout_status(delivered: bool, headers: &[(Vec<u8>, Vec<u8>)]) -> Option<u16> {
    let (_, status) = headers.iter().find(|(k, _)| k.as_slice() == b":status").filter(|_| delivered)?;
    std::str::from_utf8(status).ok()?.parse().ok()
}

/// A callout's answer as Envoy delivers it: headers, then the body's chunks.
pub struct CalloutAnswer {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutAnswer {
    /// Copies what a `*_http_callout_done` hook was given.
    ///
    /// # Safety
    /// The pointers and sizes are the hook's arguments: null, or arrays of that many entries
    /// whose buffers are valid for the hook's duration.
    pub unsafe fn read(
        headers: *const EnvoyHttpHeader,
        headers_size: usize,
        chunks: *const EnvoyBuffer,
        chunks_size: usize,
    ) -> CalloutAnswer {
        let headers = if headers.is_null() {
            &[][..]
        } else {
            // SAFETY: the caller's promise.
            unsafe { core::slice::from_raw_parts(headers, headers_size) }
        };
        let chunks = if chunks.is_null() {
            &[][..]
        } else {
            // SAFETY: the caller's promise.
            unsafe { core::slice::from_raw_parts(chunks, chunks_size) }
        };
        let mut body = Vec::new();
        for chunk in chunks {
            // SAFETY: a buffer of the answer, valid during the hook.
            body.extend_from_slice(&unsafe { chunk.to_vec() }.unwrap_or_default());
        }
        let headers = headers
            .iter()
            // SAFETY: buffers of the answer, valid during the hook.
            .map(|h| unsafe { (h.key.to_vec().unwrap_or_default(), h.value.to_vec().unwrap_or_default()) })
            .collect();
        CalloutAnswer { headers, body }
    }
}

unsafe extern "C" {
    /// glibc's `dlsym` (in libc.so.6 since glibc 2.34; std links libc).
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_DEFAULT`: search the global scope, where the Envoy executable's exported
/// callbacks are.
const RTLD_DEFAULT: *mut c_void = core::ptr::null_mut();

fn lookup(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: `name` is a NUL-terminated C string that outlives the call; RTLD_DEFAULT is a
    // valid pseudo-handle for glibc's dlsym, which has no other preconditions.
    let found = unsafe { dlsym(RTLD_DEFAULT, name.as_ptr()) };
    if found.is_null() {
        return Err(format!(
            "sluice: the host does not export {} (this module was written for Envoy's dynamic-module \
             ABI {}, Envoy 1.40): refusing to load",
            name.to_string_lossy(),
            ABI_VERSION.to_string_lossy()
        ));
    }
    Ok(found)
}

/// Header and chunk arrays up to this long are read onto the stack (a request's headers and a
/// body's chunks rarely pass it); longer ones onto the heap.
const INLINE_ENTRIES: usize = 32;

/// One stream, as the module may touch it: Envoy's filter pointer and the callbacks. Safe to
/// use because it is only made (unsafely, in the hooks) from the pointer Envoy passed to
/// `on_http_filter_new`, kept in that stream's own object, and dropped with it in
/// `on_http_filter_destroy`; a raw pointer makes it neither `Send` nor `Sync`, so it stays on the
/// stream's worker thread.
#[derive(Clone, Copy)]
pub struct Stream {
    ptr: FilterEnvoyPtr,
    callbacks: &'static Callbacks,
}

impl Stream {
    /// # Safety
    /// `ptr` is the `DynamicModuleHttpFilter*` Envoy gave `on_http_filter_new`, and the value is
    /// used only on that stream's worker thread, before Envoy calls `on_http_filter_destroy`.
    pub unsafe fn new(ptr: FilterEnvoyPtr, callbacks: &'static Callbacks) -> Stream {
        Stream { ptr, callbacks }
    }

    pub fn callbacks(&self) -> &'static Callbacks {
        self.callbacks
    }

    pub fn header(&self, kind: HeaderType, name: &str) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: a live stream (see `new`); `value` is writable; a null count pointer is allowed.
        let found = unsafe {
            (self.callbacks.get_header)(
                self.ptr,
                kind,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                core::ptr::null_mut(),
            )
        };
        // SAFETY: Envoy just pointed `value` into its header map, unchanged until our next call.
        if found { unsafe { value.to_vec() } } else { None }
    }

    /// The first value of each of `names` (lowercase, as Envoy keeps them), in one pass over
    /// the map: two calls, where a lookup per name is one each plus Envoy's copy of the name.
    pub fn headers<const N: usize>(&self, kind: HeaderType, names: [&str; N]) -> [Option<Vec<u8>>; N] {
        let mut found: [Option<Vec<u8>>; N] = [const { None }; N];
        self.visit_headers(kind, |key, value| {
            if let Some(slot) = names.iter().position(|n| n.as_bytes() == key).and_then(|i| found.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(value.to_vec());
            }
        });
        found
    }

    /// Every header of the map, in order, in one host call (the entries on the stack unless
    /// there are many).
    pub fn visit_headers(&self, kind: HeaderType, mut visit: impl FnMut(&[u8], &[u8])) {
        // SAFETY: a live stream.
        let count = unsafe { (self.callbacks.get_headers_size)(self.ptr, kind) };
        if count == 0 {
            return;
        }
        const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader { key: EnvoyBuffer::NULL, value: EnvoyBuffer::NULL };
        let (mut stack, mut heap) = ([EMPTY; INLINE_ENTRIES], Vec::new());
        let headers = match stack.get_mut(..count) {
            Some(inline) => inline,
            None => {
                heap.resize(count, EMPTY);
                &mut heap[..]
            }
        };
        // SAFETY: a live stream; `headers` has room for the `count` entries Envoy just reported.
        if !unsafe { (self.callbacks.get_headers)(self.ptr, kind, headers.as_mut_ptr()) } {
            return;
        }
        for header in headers.iter() {
            // SAFETY: Envoy just filled the entry from its map, unchanged until our next call.
            let (Some(key), Some(value)) = (unsafe { header.key.as_slice() }, unsafe { header.value.as_slice() })
            else {
                continue;
            };
            visit(key, value);
        }
    }

    /// Sets (replaces) a header, or removes it with `None`.
    pub fn set_header(&self, kind: HeaderType, name: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: a live stream; Envoy copies both buffers before returning.
        unsafe { (self.callbacks.set_header)(self.ptr, kind, ModuleBuffer::of(name.as_bytes()), value) }
    }

    /// Adds a value to a header, keeping any it has.
    pub fn add_header(&self, kind: HeaderType, name: &str, value: &[u8]) -> bool {
        // SAFETY: a live stream; Envoy copies both buffers before returning.
        unsafe {
            (self.callbacks.add_header)(self.ptr, kind, ModuleBuffer::of(name.as_bytes()), ModuleBuffer::of(value))
        }
    }

    /// Appends one body (all its chunks) to `out`.
    pub fn read_body(&self, kind: BodyType, out: &mut Vec<u8>) {
        // SAFETY: a live stream.
        let count = unsafe { (self.callbacks.get_body_chunks_size)(self.ptr, kind) };
        if count == 0 {
            return;
        }
        let (mut stack, mut heap) = ([EnvoyBuffer::NULL; INLINE_ENTRIES], Vec::new());
        let chunks = match stack.get_mut(..count) {
            Some(inline) => inline,
            None => {
                heap.resize(count, EnvoyBuffer::NULL);
                &mut heap[..]
            }
        };
        // SAFETY: a live stream; `chunks` has room for the `count` buffers Envoy just reported.
        if !unsafe { (self.callbacks.get_body_chunks)(self.ptr, kind, chunks.as_mut_ptr()) } {
            return;
        }
        for chunk in chunks.iter() {
            // SAFETY: Envoy just filled `chunk` from the body, unchanged until our next call.
            if let Some(bytes) = unsafe { chunk.as_slice() } {
                out.extend_from_slice(bytes);
            }
        }
    }

    pub fn body_len(&self, kind: BodyType) -> usize {
        // SAFETY: a live stream.
        unsafe { (self.callbacks.get_body_size)(self.ptr, kind) }
    }

    pub fn drain_body(&self, kind: BodyType, bytes: usize) -> bool {
        // SAFETY: a live stream; `bytes` is at most the body's length (the caller measured it).
        unsafe { (self.callbacks.drain_body)(self.ptr, kind, bytes) }
    }

    pub fn append_body(&self, kind: BodyType, bytes: &[u8]) -> bool {
        // SAFETY: a live stream; Envoy copies the bytes.
        unsafe { (self.callbacks.append_body)(self.ptr, kind, ModuleBuffer::of(bytes)) }
    }

    /// True when the chunk this request-body callback brought is Envoy's buffer itself.
    pub fn received_is_buffered(&self) -> bool {
        // SAFETY: a live stream.
        unsafe { (self.callbacks.received_buffered_request_body)(self.ptr) }
    }

    /// A local reply (Envoy's response code details: `dynamic_module`).
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let headers = module_headers(headers);
        // SAFETY: a live stream; `headers` and `body` outlive the call and Envoy copies them.
        unsafe {
            (self.callbacks.send_response)(
                self.ptr,
                status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::NULL,
            );
        }
    }

    pub fn clear_route_cache(&self) {
        // SAFETY: a live stream.
        unsafe { (self.callbacks.clear_route_cache)(self.ptr) }
    }

    pub fn continue_decoding(&self) {
        // SAFETY: a live stream.
        unsafe { (self.callbacks.continue_decoding)(self.ptr) }
    }

    pub fn attribute(&self, id: AttributeId) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: a live stream; `value` is writable.
        let found = unsafe { (self.callbacks.get_attribute_string)(self.ptr, id, &mut value) };
        // SAFETY: Envoy just pointed `value` at the attribute's bytes.
        if found { unsafe { value.to_vec() } } else { None }
    }

    /// Starts an HTTP request to `cluster` for this stream; its id, or None if Envoy could not
    /// start it (no such cluster, or it failed before returning).
    pub fn http_callout(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u64> {
        // SAFETY: a live stream, the object this callback takes.
        unsafe { callout(self.callbacks.http_callout, self.ptr, cluster, headers, body, timeout_ms) }
    }

    /// Adds to a counter the stream's config defined.
    pub fn increment_counter(&self, id: usize, delta: u64) -> bool {
        // SAFETY: a live stream; no labels (null with length 0 is allowed).
        unsafe { (self.callbacks.increment_counter)(self.ptr, id, core::ptr::null(), 0, delta) == METRICS_SUCCESS }
    }
}

impl Callbacks {
    /// A line in Envoy's log (any thread).
    pub fn log(&self, level: LogLevel, message: &str) {
        // SAFETY: the buffer outlives the call; Envoy copies it.
        unsafe { (self.log)(level, ModuleBuffer::of(message.as_bytes())) }
    }
}

/// A filter config while Envoy creates it (`on_http_filter_config_new`): where counters are
/// defined.
pub struct ConfigHandle {
    ptr: ConfigEnvoyPtr,
    callbacks: &'static Callbacks,
}

impl ConfigHandle {
    /// # Safety
    /// `ptr` is the `DynamicModuleHttpFilterConfig*` Envoy passed to the running
    /// `on_http_filter_config_new`, and the handle does not outlive that call.
    pub unsafe fn new(ptr: ConfigEnvoyPtr, callbacks: &'static Callbacks) -> ConfigHandle {
        ConfigHandle { ptr, callbacks }
    }

    pub fn ptr(&self) -> ConfigEnvoyPtr {
        self.ptr
    }

    /// Defines a counter (no labels); its id, or None if Envoy refused.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: the config being created (see `new`); Envoy copies the name; `id` is writable;
        // no labels (null with length 0 is allowed).
        let result = unsafe {
            (self.callbacks.define_counter)(self.ptr, ModuleBuffer::of(name.as_bytes()), core::ptr::null(), 0, &mut id)
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

/// A filter config between its creation and its destruction, used on Envoy's main thread only:
/// the singleton's callouts and counters. A raw pointer makes it neither `Send` nor `Sync`.
#[derive(Clone, Copy)]
pub struct LiveConfig {
    ptr: ConfigEnvoyPtr,
    callbacks: &'static Callbacks,
}

impl LiveConfig {
    /// # Safety
    /// `ptr` is the `DynamicModuleHttpFilterConfig*` Envoy passed to `on_http_filter_config_new`;
    /// the value is used only on Envoy's main thread and forgotten in
    /// `on_http_filter_config_destroy` of the module config made with it.
    pub unsafe fn new(ptr: ConfigEnvoyPtr, callbacks: &'static Callbacks) -> LiveConfig {
        LiveConfig { ptr, callbacks }
    }

    pub fn ptr(&self) -> ConfigEnvoyPtr {
        self.ptr
    }

    pub fn callbacks(&self) -> &'static Callbacks {
        self.callbacks
    }

    /// Starts an HTTP request to `cluster` from the config; its id, or None.
    pub fn http_callout(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout_ms: u64) -> Option<u64> {
        // SAFETY: a live config (see `new`), on the main thread: the object this callback takes.
        unsafe { callout(self.callbacks.config_http_callout, self.ptr, cluster, headers, body, timeout_ms) }
    }

    pub fn increment_counter(&self, id: usize, delta: u64) -> bool {
        // SAFETY: a live config; no labels.
        unsafe {
            (self.callbacks.config_increment_counter)(self.ptr, id, core::ptr::null(), 0, delta) == METRICS_SUCCESS
        }
    }

    /// A scheduler posting to the main thread on this config's behalf.
    pub fn new_scheduler(&self) -> Option<Scheduler> {
        // SAFETY: a live config.
        let ptr = unsafe { (self.callbacks.config_scheduler_new)(self.ptr) };
        (!ptr.is_null()).then_some(Scheduler { ptr, callbacks: self.callbacks })
    }
}

/// Envoy's config scheduler: `commit` from any thread posts `on_http_filter_config_scheduled`
/// to the main thread (dropped silently if the config is gone by then). Deleted on drop.
pub struct Scheduler {
    ptr: SchedulerPtr,
    callbacks: &'static Callbacks,
}

// SAFETY: Envoy's scheduler posts to the main dispatcher under its own lock and holds the
// config weakly: committing from any thread is its purpose. The module deletes it (on drop)
// only on the main thread, under the lock the committing thread holds (`native::service`).
unsafe impl Send for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a scheduler Envoy made and the module has not deleted (it is deleted on drop).
        unsafe { (self.callbacks.config_scheduler_commit)(self.ptr, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by config_scheduler_new, deleted once.
        unsafe { (self.callbacks.config_scheduler_delete)(self.ptr) }
    }
}
