/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-user: the differences between the kernels it builds for (Debian 12's
 * 6.1 and later LTS kernels), so that no other file tests
 * LINUX_VERSION_CODE.
 */
#ifndef DM_USER_COMPAT_H
#define DM_USER_COMPAT_H

#include <linux/blkdev.h>
#include <linux/version.h>

/* 6.2 made the device_type devnode callback take a const device. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define DMU_DEVNODE_CONST const
#else
#define DMU_DEVNODE_CONST
#endif

/* From 6.9 the block layer derives max_sectors and max_discard_sectors. */
static inline void dmu_set_derived_limits(struct queue_limits *limits)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
	limits->max_sectors = limits->max_hw_sectors;
	limits->max_discard_sectors = limits->max_hw_discard_sectors;
#endif
}

#endif /* DM_USER_COMPAT_H */
