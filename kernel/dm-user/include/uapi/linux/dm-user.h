/* SPDX-License-Identifier: LGPL-2.0+ WITH Linux-syscall-note */
/*
 * dm-user: the wire ABI between the "user" device-mapper target and the
 * daemons that serve it through /dev/dm-user/<control-name>.
 *
 * Part 1 (struct dm_user_message and the DM_USER_REQ_MAP_* / _FLAG_* /
 * DM_USER_RESP_* values) is byte-compatible with Android's dm-user module.
 * Part 2 (everything below "Extensions") is this project's. Its ioctls are
 * used only by a daemon that calls them; but by default every daemon, a
 * Part 1 one included, receives what the device advertises: PREFLUSH and FUA
 * writes, DISCARD, WRITE_ZEROES and SECURE_ERASE (spec Part 2, item 6). A
 * Part 1 daemon that cannot handle them answers UNSUPPORTED, or the table
 * turns them off (no_flush, no_discard, no_write_zeroes, no_secure_erase);
 * kernel/dm-user/README.md has the table of what a plain table line delivers.
 */
#ifndef _UAPI_LINUX_DM_USER_H
#define _UAPI_LINUX_DM_USER_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* Request types (dm_user_message.type, kernel -> daemon). */
#define DM_USER_REQ_MAP_READ		0
#define DM_USER_REQ_MAP_WRITE		1
#define DM_USER_REQ_MAP_FLUSH		2
#define DM_USER_REQ_MAP_DISCARD		3
#define DM_USER_REQ_MAP_SECURE_ERASE	4
#define DM_USER_REQ_MAP_WRITE_SAME	5
#define DM_USER_REQ_MAP_WRITE_ZEROES	6
#define DM_USER_REQ_MAP_ZONE_OPEN	7
#define DM_USER_REQ_MAP_ZONE_CLOSE	8
#define DM_USER_REQ_MAP_ZONE_FINISH	9
#define DM_USER_REQ_MAP_ZONE_APPEND	10
#define DM_USER_REQ_MAP_ZONE_RESET	11
#define DM_USER_REQ_MAP_ZONE_RESET_ALL	12

/* Request flags (dm_user_message.flags, kernel -> daemon). */
#define DM_USER_REQ_MAP_FLAG_FAILFAST_DEV	0x00001
#define DM_USER_REQ_MAP_FLAG_FAILFAST_TRANSPORT	0x00002
#define DM_USER_REQ_MAP_FLAG_FAILFAST_DRIVER	0x00004
#define DM_USER_REQ_MAP_FLAG_SYNC		0x00008
#define DM_USER_REQ_MAP_FLAG_META		0x00010
#define DM_USER_REQ_MAP_FLAG_PRIO		0x00020
#define DM_USER_REQ_MAP_FLAG_NOMERGE		0x00040
#define DM_USER_REQ_MAP_FLAG_IDLE		0x00080
#define DM_USER_REQ_MAP_FLAG_INTEGRITY		0x00100
#define DM_USER_REQ_MAP_FLAG_FUA		0x00200
#define DM_USER_REQ_MAP_FLAG_PREFLUSH		0x00400
#define DM_USER_REQ_MAP_FLAG_RAHEAD		0x00800
#define DM_USER_REQ_MAP_FLAG_BACKGROUND		0x01000
#define DM_USER_REQ_MAP_FLAG_NOWAIT		0x02000
#define DM_USER_REQ_MAP_FLAG_CGROUP_PUNT	0x04000
#define DM_USER_REQ_MAP_FLAG_NOUNMAP		0x08000
#define DM_USER_REQ_MAP_FLAG_HIPRI		0x10000
#define DM_USER_REQ_MAP_FLAG_DRV		0x20000
#define DM_USER_REQ_MAP_FLAG_SWAP		0x40000

/* Response results (dm_user_message.type, daemon -> kernel). */
#define DM_USER_RESP_SUCCESS		0
#define DM_USER_RESP_ERROR		1
#define DM_USER_RESP_UNSUPPORTED	2

/*
 * Every request and response starts with this 40-byte header. A WRITE
 * request carries len bytes of payload after it; so does a SUCCESS response
 * to a READ. No other message carries a payload.
 */
struct dm_user_message {
	__u64 seq;
	__u64 type;
	__u64 flags;
	__u64 sector;
	__u64 len;
	__u8 buf[];
};

/*
 * Extensions (spec Part 2).
 *
 * A daemon discovers them with DM_USER_IOC_GET_INFO on an open channel.
 * Android's module has no ioctls, so there the call fails with ENOTTY and the
 * daemon knows it must speak Part 1 only.
 */

/* Target version reported by `dmsetup targets` and by DM_USER_IOC_GET_INFO. */
#define DM_USER_VERSION_MAJOR	2
#define DM_USER_VERSION_MINOR	0
#define DM_USER_VERSION_PATCH	0

/* Channel behaviour this module always has (dm_user_info.features). */
#define DM_USER_FEATURE_POLL		(1ULL << 0) /* poll() and O_NONBLOCK/IOCB_NOWAIT reads */
#define DM_USER_FEATURE_WHOLE_MESSAGE	(1ULL << 1) /* one read returns header and payload */
#define DM_USER_FEATURE_MULTI_RESPONSE	(1ULL << 2) /* one write may carry several responses */
#define DM_USER_FEATURE_REQUEUE		(1ULL << 3) /* DM_USER_CHANNEL_REQUEUE_ON_CLOSE */
#define DM_USER_FEATURE_TARGET_NOWAIT	(1ULL << 4) /* the target maps REQ_NOWAIT bios */
#define DM_USER_FEATURE_CLAIM		(1ULL << 5) /* DM_USER_IOC_CLAIM */

/* What this target's table enabled (dm_user_info.ops): each may be turned off. */
#define DM_USER_OP_FLUSH		(1ULL << 0) /* volatile write cache: PREFLUSH and FUA arrive */
#define DM_USER_OP_DISCARD		(1ULL << 1)
#define DM_USER_OP_WRITE_ZEROES		(1ULL << 2)
#define DM_USER_OP_SECURE_ERASE		(1ULL << 3)

struct dm_user_info {
	__u32 version_major;
	__u32 version_minor;
	__u32 version_patch;
	__u32 reserved0;
	__u64 features;		/* DM_USER_FEATURE_* */
	__u64 ops;		/* DM_USER_OP_* */
	__u64 max_payload;	/* largest dm_user_message.len of a READ or WRITE, bytes */
	__u64 device_sectors;	/* length of the target, 512-byte sectors */
	__u64 reserved[10];
};

/* Per-channel flags, set with DM_USER_IOC_SET_CHANNEL_FLAGS. */
/*
 * When this channel is closed (or its daemon dies), requests it read but did
 * not answer go back to the queue for another channel instead of failing.
 */
#define DM_USER_CHANNEL_REQUEUE_ON_CLOSE	(1ULL << 0)

/*
 * The ioctls' own magic (unused in Documentation/userspace-api/ioctl/
 * ioctl-number.rst). Early builds of version 2.0.0 borrowed dm-ioctl's
 * 0xfd, with numbers 0x80 and 0x81; a daemon that gets ENOTTY for both
 * takes the module for Android's and speaks Part 1.
 */
#define DM_USER_IOC_MAGIC	0xde
#define DM_USER_IOC_GET_INFO	_IOR(DM_USER_IOC_MAGIC, 0x00, struct dm_user_info)
#define DM_USER_IOC_SET_CHANNEL_FLAGS _IOW(DM_USER_IOC_MAGIC, 0x01, __u64)
/*
 * Make the target exclusive to the calling process: its channels, those it
 * opened before and those it opens later, are the only ones that may read
 * requests; open() by any other process fails with EBUSY, and so does a
 * read() on a channel another process opened. The claim ends when the last
 * of its channels is closed. EBUSY if another process holds it.
 */
#define DM_USER_IOC_CLAIM	_IO(DM_USER_IOC_MAGIC, 0x02)

#endif /* _UAPI_LINUX_DM_USER_H */
