//! Emits pyo3's interpreter-version cfgs (`Py_3_12`, `Py_3_13`, ...), so
//! private CPython APIs that later versions removed are gated at compile time.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
