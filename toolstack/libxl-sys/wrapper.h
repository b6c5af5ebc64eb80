/*
 * The one header bindgen reads. The API version pins the libxl interface we
 * program against: 0x041300 is the newest stable level Xen 4.17 accepts
 * besides 0x041400, and the one hyperxl was written for.
 */
#define LIBXL_API_VERSION 0x041300
#include <libxl.h>
#include <libxl_utils.h>
#include <xentoollog.h>
/* The control channel's dom0 end (issue 12): libxenvchan, LGPL-2.1+, in libxenmisc. */
#include <libxenvchan.h>
