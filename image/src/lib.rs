//! OCI/Docker images: references, registry pull, store, layer merge, rootfs disks.
