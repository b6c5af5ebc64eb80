//! HyperKernel build checks and the guest initramfs (cpio newc) assembly.
