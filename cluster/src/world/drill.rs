//! The drill in virtual time (filled in below).
