//! An emulated cluster node (media, meeting, IVR, queue or IM server).
