//! A hand-written binding of the few parts of Envoy's dynamic-module ABI this module uses
//! (`source/extensions/dynamic_modules/abi/abi.h`, ABI version [`ABI_VERSION`], the one Envoy
//! 1.40.0 compares against). Envoy's Rust SDK is not on crates.io and is not vendored here.
//!
//! Two directions:
//! - **Event hooks** (`envoy_dynamic_module_on_*`): functions this module exports and Envoy calls.
//!   They are defined in `lib.rs` with these types.
//! - **Callbacks** (`envoy_dynamic_module_callback_*`): functions the Envoy binary exports and
//!   the module calls. They are not linked: [`Host::resolve`] looks each one up in the running
//!   process (`dlsym`) when Envoy loads the module, so a host that lacks one fails the load
//!   with a message naming it, instead of the dynamic linker's `undefined symbol` or a crash
//!   on first use.
//!
//! On x86-64 and aarch64 a `{pointer, length}` struct passed by value travels in two integer
//! registers, exactly like the C header's `envoy_dynamic_module_type_*_buffer` structs.

use core::ffi::{c_char, c_void};

/// The ABI version this binding was written against: what `envoy_dynamic_module_on_program_init`
/// returns. Envoy 1.40.0 compares it with its own (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`) and logs
/// `Dynamic module ABI version v0.2.0 matched.` or, on a mismatch, only a warning (`... is
/// deprecated ...`): the integration test requires the match.
pub const ABI_VERSION: &core::ffi::CStr = c"v0.2.0";

/// Envoy's `DynamicModuleHttpFilterConfig*`, opaque to the module.
pub type HttpFilterConfigEnvoyPtr = *mut c_void;
/// The module's per-config object, opaque to Envoy; null rejects the config.
pub type HttpFilterConfigModulePtr = *const c_void;
/// Envoy's `DynamicModuleHttpFilter*` for one stream, opaque to the module.
pub type HttpFilterEnvoyPtr = *mut c_void;
/// The module's per-stream object, opaque to Envoy; null fails the stream.
pub type HttpFilterModulePtr = *const c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
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

    pub const fn from_static(s: &'static str) -> ModuleBuffer {
        ModuleBuffer { ptr: s.as_ptr().cast(), length: s.len() }
    }
}

/// `envoy_dynamic_module_type_http_header_type` (a C enum: an `int`).
pub type HttpHeaderType = u32;
pub const HTTP_HEADER_TYPE_REQUEST_HEADER: HttpHeaderType = 0;

/// The `envoy_dynamic_module_type_on_http_filter_*_status` enums: Envoy casts them to its own
/// `FilterHeadersStatus` / `FilterDataStatus` / `FilterTrailersStatus`, where `Continue` is 0.
pub type FilterStatus = u32;
pub const STATUS_CONTINUE: FilterStatus = 0;

/// `bool envoy_dynamic_module_callback_http_get_header(filter_envoy_ptr, header_type,
/// module_buffer key, envoy_buffer* result, size_t index, size_t* optional_size)`: the
/// `index`-th value of `key` into `result` (left `{NULL, 0}` when absent); the number of values
/// into `optional_size` when it is not null.
pub type GetHeaderFn =
    unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpHeaderType, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool;

/// `bool envoy_dynamic_module_callback_http_set_header(filter_envoy_ptr, header_type,
/// module_buffer key, module_buffer value)`: replaces every value of `key` with `value`
/// (copied); a null `value.ptr` removes the header.
pub type SetHeaderFn = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpHeaderType, ModuleBuffer, ModuleBuffer) -> bool;

/// `bool envoy_dynamic_module_callback_http_get_metadata_string(filter_envoy_ptr, source,
/// module_buffer ns, module_buffer key, envoy_buffer* result)`. Checked against the Envoy 1.40
/// binary's disassembly: ns and key arrive in rdx:rcx and r8:r9, `result` is the 7th (stack) word.
pub type GetMetadataStringFn =
    unsafe extern "C" fn(HttpFilterEnvoyPtr, u32, ModuleBuffer, ModuleBuffer, *mut EnvoyBuffer) -> bool;
/// `envoy_dynamic_module_type_metadata_source`: Dynamic=0, Route=1, Cluster=2, Host=3, HostLocality=4.
pub const METADATA_SOURCE_DYNAMIC: u32 = 0;
pub const METADATA_SOURCE_HOST: u32 = 3;
pub const METADATA_SOURCE_HOST_LOCALITY: u32 = 4;
const GET_METADATA_STRING: &core::ffi::CStr = c"envoy_dynamic_module_callback_http_get_metadata_string";

const GET_HEADER: &core::ffi::CStr = c"envoy_dynamic_module_callback_http_get_header";
const SET_HEADER: &core::ffi::CStr = c"envoy_dynamic_module_callback_http_set_header";

/// The host callbacks the module calls, resolved once at load.
#[derive(Clone, Copy)]
pub struct Host {
    pub get_header: GetHeaderFn,
    pub set_header: SetHeaderFn,
    pub get_metadata_string: GetMetadataStringFn,
}

unsafe extern "C" {
    /// glibc's `dlsym` (in libc.so.6 since glibc 2.34; std links libc).
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_DEFAULT`: search the global scope, where the Envoy executable's exported
/// callbacks are.
const RTLD_DEFAULT: *mut c_void = core::ptr::null_mut();

fn lookup(name: &core::ffi::CStr) -> Result<*mut c_void, String> {
    // SAFETY: `name` is a NUL-terminated C string that outlives the call; RTLD_DEFAULT is a
    // valid pseudo-handle for glibc's dlsym, which has no other preconditions.
    let found = unsafe { dlsym(RTLD_DEFAULT, name.as_ptr()) };
    if found.is_null() {
        return Err(format!(
            "attempts-native-probe: the host does not export {} (this module was written for Envoy's \
             dynamic-module ABI {}, Envoy 1.40): refusing to load",
            name.to_string_lossy(),
            ABI_VERSION.to_string_lossy()
        ));
    }
    Ok(found)
}

impl Host {
    /// Looks up every callback the module uses; the first missing one is the error.
    pub fn resolve() -> Result<Host, String> {
        let get_header = lookup(GET_HEADER)?;
        let set_header = lookup(SET_HEADER)?;
        let get_metadata_string = lookup(GET_METADATA_STRING)?;
        // SAFETY: both symbols are Envoy's exported C functions of these exact signatures
        // (abi.h at ABI v0.2.0); a data pointer and a function pointer have the same size and
        // representation on every target Envoy supports (as POSIX requires for dlsym).
        Ok(unsafe {
            Host {
                get_header: core::mem::transmute::<*mut c_void, GetHeaderFn>(get_header),
                set_header: core::mem::transmute::<*mut c_void, SetHeaderFn>(set_header),
                get_metadata_string: core::mem::transmute::<*mut c_void, GetMetadataStringFn>(get_metadata_string),
            }
        })
    }
}
