//! Q1 for the native build: an Envoy dynamic module placed in a cluster's upstream HTTP filter
//! chain logs (to Envoy's stderr, `NATIVE-PROBE` lines) what
//! `envoy_dynamic_module_callback_http_get_metadata_string` returns for the chosen host's
//! endpoint metadata (`sluice.deployment`, source Host), its locality metadata, and the dynamic
//! metadata `sluice.ctx`, at request headers and request body; it copies the deployment into the
//! request header `x-native-deployment`. Copied from `tests/native-noop` (do not confuse).

#![allow(unsafe_code)]

mod abi;

use core::ffi::{c_char, c_void};
use std::sync::OnceLock;

use abi::{
    EnvoyBuffer, FilterStatus, HTTP_HEADER_TYPE_REQUEST_HEADER, Host, HttpFilterConfigEnvoyPtr,
    HttpFilterConfigModulePtr, HttpFilterEnvoyPtr, HttpFilterModulePtr, ModuleBuffer, STATUS_CONTINUE,
};

pub use abi::ABI_VERSION;

/// The request header the bench sends the provider key in (as for the wasm no-op filter).
/// Where the provider key goes.

/// The host callbacks, resolved once by `envoy_dynamic_module_on_program_init`.
static HOST: OnceLock<Host> = OnceLock::new();

/// The one object Envoy gets back for every config and every stream: the module has no state.
static NOOP: u8 = 0;

fn noop_ptr() -> *const c_void {
    (&raw const NOOP).cast()
}

/// Called once when Envoy loads the module. Returns the ABI version the module was written
/// against, or null (Envoy then rejects the config: "Failed to initialize dynamic module") when
/// the host lacks a callback the module calls; the reason goes to Envoy's stderr.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    match Host::resolve() {
        Ok(host) => {
            let _ = HOST.set(host);
            ABI_VERSION.as_ptr()
        }
        Err(e) => {
            eprintln!("{e}");
            core::ptr::null()
        }
    }
}

/// A filter config (`filter_name`, `filter_config`): any name and config are accepted.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: HttpFilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> HttpFilterConfigModulePtr {
    noop_ptr()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: HttpFilterConfigModulePtr) {}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: HttpFilterConfigModulePtr,
    _filter_envoy: HttpFilterEnvoyPtr,
) -> HttpFilterModulePtr {
    noop_ptr()
}

fn read_md(host: &Host, f: HttpFilterEnvoyPtr, source: u32, ns: &'static str, key: &'static str) -> Option<String> {
    let mut out = EnvoyBuffer { ptr: core::ptr::null(), length: 0 };
    // SAFETY: `f` is the live stream Envoy passed to the calling hook; `out` is writable.
    let ok = unsafe { (host.get_metadata_string)(f, source, ModuleBuffer::from_static(ns), ModuleBuffer::from_static(key), &mut out) };
    if !ok || out.ptr.is_null() {
        return None;
    }
    // SAFETY: Envoy-owned bytes valid for the rest of this hook; copied out at once.
    let bytes = unsafe { core::slice::from_raw_parts(out.ptr.cast::<u8>(), out.length) };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn probe(f: HttpFilterEnvoyPtr, at: &str) -> Option<String> {
    let host = HOST.get()?;
    let dep = read_md(host, f, abi::METADATA_SOURCE_HOST, "sluice", "deployment");
    let loc = read_md(host, f, abi::METADATA_SOURCE_HOST_LOCALITY, "sluice", "deployment");
    let dynm = read_md(host, f, abi::METADATA_SOURCE_DYNAMIC, "sluice", "ctx");
    eprintln!("NATIVE-PROBE {at}: host sluice.deployment={dep:?} host_locality={loc:?} dynamic sluice.ctx={dynm:?}");
    dep
}

/// # Safety
/// Envoy calls it with the `DynamicModuleHttpFilter*` of a live stream, on that stream's worker.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
    let dep = probe(filter_envoy, "request_headers").unwrap_or_else(|| "none".into());
    if let Some(host) = HOST.get() {
        let v = ModuleBuffer { ptr: dep.as_ptr().cast(), length: dep.len() };
        // SAFETY: live stream; `v` outlives the call and Envoy copies it.
        unsafe { (host.set_header)(filter_envoy, HTTP_HEADER_TYPE_REQUEST_HEADER, ModuleBuffer::from_static("x-native-deployment"), v) };
    }
    STATUS_CONTINUE
}

// The other hooks Envoy 1.40 resolves when it loads an HTTP filter module: nothing to do.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
    probe(filter_envoy, "request_body");
    STATUS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) -> FilterStatus {
    STATUS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
    STATUS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
    STATUS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) -> FilterStatus {
    STATUS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: HttpFilterModulePtr) {}

/// An HTTP callout finished (the module starts none). The trailing arguments (result, headers,
/// body chunks) are not declared: the module never reads them.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _callout_id: u64,
) {
}

/// The stream-callout hooks (the module opens no streams); trailing arguments undeclared.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _event_id: u64,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) {
}

