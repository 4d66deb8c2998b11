//! The native floor: an Envoy dynamic module (`envoy.filters.http.dynamic_modules`) doing exactly
//! the work of the no-op wasm filter (`tests/noop-filter`): on request headers it reads
//! `x-bench-provider-key` and writes its value into `authorization` (removing `authorization`
//! when the key is absent, as the wasm filter's `set_http_request_header_bytes(.., None)` does),
//! then continues. Envoy with this module against Envoy with the wasm no-op filter shows what
//! the native build saves on every request before any of Sluice's own work (issue 15).
//!
//! The module keeps no per-stream state: `on_http_filter_new` hands Envoy a pointer to one
//! static, so the measured cost is the hooks and the two header callbacks, nothing else.
//!
//! FFI by nature: the hooks are `extern "C"` functions Envoy calls with its own pointers, so
//! `unsafe` is allowed at this crate's root (the workspace denies it elsewhere); every `unsafe`
//! block says why it holds.

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
const KEY_HEADER: ModuleBuffer = ModuleBuffer::from_static("x-bench-provider-key");
/// Where the provider key goes.
const AUTHORIZATION: ModuleBuffer = ModuleBuffer::from_static("authorization");

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

/// The filter's work: `authorization` := `x-bench-provider-key`.
///
/// # Safety
/// Envoy calls it with the `DynamicModuleHttpFilter*` of a live stream, on that stream's worker.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
    let Some(host) = HOST.get() else {
        return STATUS_CONTINUE;
    };
    let mut key = EnvoyBuffer { ptr: core::ptr::null(), length: 0 };
    // SAFETY: `filter_envoy` is the live stream Envoy passed to this hook; `key` is a writable
    // EnvoyBuffer; a null `optional_size` is allowed.
    let found = unsafe {
        (host.get_header)(filter_envoy, HTTP_HEADER_TYPE_REQUEST_HEADER, KEY_HEADER, &mut key, 0, core::ptr::null_mut())
    };
    let value = if found && !key.ptr.is_null() {
        ModuleBuffer { ptr: key.ptr, length: key.length }
    } else {
        ModuleBuffer::NULL
    };
    // SAFETY: `value` points into the value of `x-bench-provider-key` in the same request
    // header map, valid for this hook; Envoy copies it into `authorization`, another entry, so
    // the source is not touched while it is read.
    unsafe {
        (host.set_header)(filter_envoy, HTTP_HEADER_TYPE_REQUEST_HEADER, AUTHORIZATION, value);
    }
    STATUS_CONTINUE
}

// The other hooks Envoy 1.40 resolves when it loads an HTTP filter module: nothing to do.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> FilterStatus {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_version_is_the_one_envoy_1_40_expects() {
        assert_eq!(ABI_VERSION.to_str().ok(), Some("v0.2.0"));
    }

    /// Outside Envoy (this test binary exports no callbacks) the load check refuses, naming the
    /// missing callback and the ABI version, and program init returns null.
    #[test]
    fn without_envoy_the_load_check_refuses_clearly() {
        let err = Host::resolve().err().unwrap_or_default();
        assert!(err.contains("envoy_dynamic_module_callback_http_get_header"), "{err}");
        assert!(err.contains("v0.2.0"), "{err}");
        assert!(envoy_dynamic_module_on_program_init().is_null());
    }
}
