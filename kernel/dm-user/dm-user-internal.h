/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-user's internals, shared by its two halves:
 *
 *   dev.c     the control device /dev/dm-user/NAME: channels, read(),
 *             write(), poll(), ioctl(), and the requests' books
 *   target.c  the device-mapper target: table parsing, map, status,
 *             the lifecycle hooks and the no-daemon watchdog
 *
 * A request lives in the clone bio's per-bio data, so mapping a bio never
 * allocates and never sleeps. It is in exactly one of three places:
 *
 *   queued    on t->queue, in seq order, waiting for a read()
 *   held      on ch->held of the channel that read it, and in t->held (the
 *             seq hash) while a response to it is welcome
 *   answering on ch->held, out of the hash: a response header arrived and
 *             its payload is being copied in
 *
 * Data is copied between the bio pages and userspace without t->lock. While
 * that happens the request is "busy"; whoever wants to end a busy request
 * (the destructor, an abort, request_timeout) marks it doomed instead, and
 * the copier ends the bio when it is done. The destructor waits for those.
 *
 * Locking: t->lock (a spinlock) protects every field of the target, its
 * channels and its requests. Nothing sleeps, ends a bio or wakes a wait
 * queue while holding it. It is not irq-safe, because no path takes it in
 * interrupt or softirq context:
 *   - map runs in process context that may sleep: in 6.1 dm core calls it
 *     from dm_submit_bio() (submit_bio_noacct) or from its own workqueues
 *     (dm_wq_work, dm_wq_requeue_work), always after alloc_io()/alloc_tio()
 *     allocated the clone with GFP_NOIO from a mempool, which may sleep,
 *     and __map_bio() may down() the swap semaphore just before calling it;
 *   - bios are ended with the lock dropped, and the target has no end_io,
 *     so completions (possibly in irq context) never come back to it;
 *   - the watchdog is a work item; its timer only queues it;
 *   - read, write, poll, ioctl, open, release, ctr, dtr and status run in
 *     process context.
 * Lock order:
 *
 *   dmu_names_lock -> the driver core and devtmpfs (cdev_device_add/del)
 *   t->lock -> timer and workqueue internals (queue_delayed_work)
 *
 * t->wq, t->depth_wq and t->drain_wq are woken with t->lock dropped, so
 * their locks nest under nothing of ours. Waking is the kernel's own: a
 * blocked read() waits exclusively on t->wq, pollers (poll, select, epoll,
 * aio and io_uring poll) wait on it non-exclusively, and a new request does
 * wake_up_interruptible_poll(EPOLLIN): every poller and one reader, as on a
 * pipe. A reader that was woken but leaves a request queued (a signal, or
 * the rest of its own half-read request came first) passes the wake-up on.
 */
#ifndef DM_USER_INTERNAL_H
#define DM_USER_INTERNAL_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/hashtable.h>
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/pid.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "include/uapi/linux/dm-user.h"

#define DMU_NAME_MAX		64
#define DMU_HDR			sizeof(struct dm_user_message)
#define DMU_HASH_BITS		8
#define DMU_MAX_REQUEST_TIMEOUT	(24U * 3600 * 1000)	/* ms */
#define DMU_ALL_OPS (DM_USER_OP_FLUSH | DM_USER_OP_DISCARD | \
		     DM_USER_OP_WRITE_ZEROES | DM_USER_OP_SECURE_ERASE)

/* What the daemon has in flight, for the status line. */
enum dmu_class { DMU_CLASS_READ, DMU_CLASS_WRITE, DMU_CLASS_OTHER, DMU_NR_CLASSES };

struct dmu_target;
struct dmu_channel;

struct dmu_request {
	struct list_head entry;		/* t->queue or ch->held */
	struct hlist_node hnode;	/* t->held while a response is welcome */
	struct bio *bio;
	struct dmu_channel *ch;		/* holder; NULL while queued */
	u64 seq;
	u64 sector;			/* as the daemon sees it */
	unsigned long queued_at;	/* jiffies */
	u32 flags;			/* DM_USER_REQ_MAP_FLAG_* */
	u8 type;			/* DM_USER_REQ_MAP_* */
	u8 class;			/* enum dmu_class */
	bool busy;			/* being copied without t->lock */
	bool doomed;			/* ended while busy: the copier ends it */
	blk_status_t doom_status;
};

/* A response that one write() left unfinished, for the next one. */
struct dmu_partial_response {
	struct dm_user_message hdr;
	size_t hdr_len;			/* header bytes received */
	struct dmu_request *req;	/* header done: payload goes here */
	size_t off;			/* payload bytes received */
};

struct dmu_channel {
	struct dmu_target *t;
	struct list_head node;		/* t->channels */
	struct list_head held;		/* requests read, not answered */
	u64 flags;			/* DM_USER_CHANNEL_* */
	/* The unread rest of a request that one read() could not fit. */
	struct dmu_request *rd_req;
	size_t rd_off;
	bool rd_busy;			/* a read() is copying rd_req */
	bool wr_busy;			/* a write() took over @wr */
	bool claimant;			/* one of the claiming process's channels */
	struct dmu_partial_response wr;
	struct pid *opener;		/* the thread group that opened it */
};

/*
 * A control device and its requests. Usually one table line owns it; while a
 * reload with the same control name is pending, the live and the inactive
 * table share it (@tables), and the channels stay open across the swap.
 */
struct dmu_target {
	spinlock_t lock;		/* everything below; see the top */
	struct list_head queue;		/* requests no channel took yet */
	struct list_head channels;
	DECLARE_HASHTABLE(held, DMU_HASH_BITS);
	u64 next_seq;
	bool dead;			/* the last table was destroyed */
	bool noflush_suspending;	/* between presuspend and postsuspend */
	unsigned int nr_channels;
	unsigned int nr_queued;
	unsigned int nr_inflight[DMU_NR_CLASSES];
	unsigned int nr_doomed;		/* doomed bios a copier must still end */
	unsigned int nr_requests;	/* mapped and not yet ended */
	struct pid *claim;		/* DM_USER_IOC_CLAIM: the claiming process */
	unsigned int nr_claimant;	/* its open channels */
	u64 completed;
	u64 errors;
	u64 requeued;			/* pushed back to dm core */
	u64 timed_out;			/* ended by request_timeout */
	unsigned long orphaned_at;	/* jiffies when the last channel closed */

	/* What the live table set (at its resume; at ctr for a new device). */
	u64 len;
	u64 ops;			/* DM_USER_OP_* */
	unsigned int max_payload;
	unsigned int request_timeout;	/* ms; 0: requests wait for ever */
	unsigned int queue_depth;	/* most requests mapped at once */
	/* Who may open the control device without CAP_SYS_ADMIN. */
	bool access_set;		/* owner=, group= or mode= given */
	kuid_t owner;
	kgid_t group;
	umode_t mode;

	wait_queue_head_t wq;		/* readers (exclusive) and pollers */
	wait_queue_head_t depth_wq;	/* map, for nr_requests < queue_depth */
	wait_queue_head_t drain_wq;	/* the destructor, for nr_doomed */
	struct delayed_work watchdog;	/* see dmu_arm_watchdog() */

	/* Under dmu_names_lock. */
	struct list_head tables;	/* struct dmu_table.node */
	struct list_head name_node;	/* dmu_names */

	/* Constant while registered. */
	struct mapped_device *md;	/* the one device that may share it */
	char name[DMU_NAME_MAX + 1];
	/* One reference per table, one per open channel. */
	struct device dev;
	struct cdev cdev;
};

/* One table's user target: its line, and the control device it uses. */
struct dmu_table {
	struct dmu_target *t;
	struct dm_target *ti;
	struct list_head node;		/* t->tables, under dmu_names_lock */
	u64 start;
	u64 len;
	u64 ops;
	unsigned int max_payload;
	bool max_payload_set;
	unsigned int request_timeout;
	unsigned int queue_depth;	/* most requests mapped at once */
	bool queue_depth_set;
	/* Who may open the control device without CAP_SYS_ADMIN. */
	bool access_set;		/* owner=, group= or mode= given */
	kuid_t owner;
	kgid_t group;
	umode_t mode;
};

/* Bios to end once t->lock is dropped; @doomed of them were doomed ones. */
struct dmu_batch {
	struct bio_list bios;
	unsigned int doomed;
};

/* dev.c */
extern const struct file_operations dmu_fops;
void dmu_finish(struct dmu_target *t, struct dmu_request *req,
		blk_status_t status, struct dmu_batch *b);
void dmu_batch_end(struct dmu_target *t, struct dmu_batch *b);
void dmu_wake_one(struct dmu_target *t);
void dmu_wake_all(struct dmu_target *t);
int dmu_control_init(void);
void dmu_control_exit(void);
int dmu_control_register(struct dmu_target *t);
void dmu_control_unregister(struct dmu_target *t);

/* target.c */
void dmu_arm_watchdog(struct dmu_target *t);

#endif /* DM_USER_INTERNAL_H */
