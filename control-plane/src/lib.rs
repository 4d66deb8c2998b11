//! control plane (being written)
