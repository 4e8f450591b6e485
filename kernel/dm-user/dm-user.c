// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-user: a device-mapper target that hands every bio to a userspace daemon.
 *
 * A table line "<start> <length> user <start> <length> <control-name> [opts]"
 * creates the misc device /dev/dm-user/<control-name>. Every open() of it is
 * a channel. read() hands out requests (a struct dm_user_message header, plus
 * the data of a WRITE) in seq order; write() takes the responses (header, plus
 * the data of a successful READ). The wire ABI is Android's dm-user, kept
 * byte-compatible; see include/uapi/linux/dm-user.h and README.md.
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
 * (only the destructor can) marks it doomed instead, and the copier ends the
 * bio when it is done. The destructor waits for those.
 *
 * Locking: t->lock (a spinlock, irq-safe because map may run with interrupts
 * disabled) protects every field of the target, its channels and its
 * requests. Nothing sleeps or ends a bio while holding it. Lock order:
 *
 *   dmu_names_lock -> misc_mtx (misc_register/misc_deregister)
 *   misc_mtx (misc_open calls dmu_open) -> t->lock
 *   t->lock -> timer and workqueue internals (queue_delayed_work)
 *   t->lock -> ch->wq.lock -> what waiters' wake functions take (the
 *              scheduler, io_uring's poll, epoll), as in fuse's dev.c
 *
 * Readers and pollers wait on their channel's own queue, so that a new
 * request can be offered to the channels in turn (dmu_wake_one()).
 */

#include <linux/bio.h>
#include <linux/ctype.h>
#include <linux/device-mapper.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/kref.h>
#include <linux/list_sort.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uio.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "include/uapi/linux/dm-user.h"

#define DM_MSG_PREFIX "user"

#define DMU_NAME_MAX		64
#define DMU_HDR			sizeof(struct dm_user_message)
#define DMU_DEFAULT_PAYLOAD	(1U << 20)
#define DMU_MAX_PAYLOAD		(64U << 20)
/* Largest DISCARD / WRITE_ZEROES / SECURE_ERASE extent in one request. */
#define DMU_MAX_EXTENT_SECTORS	((1U << 30) >> SECTOR_SHIFT)
#define DMU_HASH_BITS		8

#define DMU_FEATURES (DM_USER_FEATURE_POLL | DM_USER_FEATURE_WHOLE_MESSAGE | \
		      DM_USER_FEATURE_MULTI_RESPONSE | DM_USER_FEATURE_REQUEUE | \
		      DM_USER_FEATURE_TARGET_NOWAIT)
#define DMU_ALL_OPS (DM_USER_OP_FLUSH | DM_USER_OP_DISCARD | \
		     DM_USER_OP_WRITE_ZEROES | DM_USER_OP_SECURE_ERASE)
#define DMU_CHANNEL_FLAGS DM_USER_CHANNEL_REQUEUE_ON_CLOSE

static unsigned int dm_user_daemon_timeout_msec = 4000;
module_param(dm_user_daemon_timeout_msec, uint, 0644);
MODULE_PARM_DESC(dm_user_daemon_timeout_msec,
		 "How long queued requests wait for a daemon when no channel is open (ms)");

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
	struct dmu_partial_response wr;
	wait_queue_head_t wq;		/* its readers (exclusive) and pollers */
};

struct dmu_target {
	spinlock_t lock;		/* everything below; see the top */
	struct list_head queue;		/* requests no channel took yet */
	struct list_head channels;
	DECLARE_HASHTABLE(held, DMU_HASH_BITS);
	u64 next_seq;
	bool dead;			/* the dm target was destroyed */
	unsigned int nr_channels;
	unsigned int nr_queued;
	unsigned int nr_inflight[DMU_NR_CLASSES];
	unsigned int nr_doomed;		/* doomed bios a copier must still end */
	u64 completed;
	u64 errors;
	unsigned long orphaned_at;	/* jiffies when the last channel closed */

	wait_queue_head_t drain_wq;	/* the destructor, for nr_doomed */
	struct delayed_work watchdog;	/* see dmu_arm_watchdog() */
	struct kref ref;		/* the dm target and each channel */

	/* Set up by the constructor, constant afterwards. */
	u64 start;
	u64 len;
	u64 ops;			/* DM_USER_OP_* */
	unsigned int max_payload;
	bool max_payload_set;
	struct miscdevice misc;
	struct list_head name_node;	/* dmu_names */
	char name[DMU_NAME_MAX + 1];
	char devname[sizeof("dm-user/") + DMU_NAME_MAX];
};

/* Bios to end once t->lock is dropped; @doomed of them were doomed ones. */
struct dmu_batch {
	struct bio_list bios;
	unsigned int doomed;
};

static LIST_HEAD(dmu_names);
static DEFINE_MUTEX(dmu_names_lock);

static const struct {
	blk_opf_t bio;
	u32 msg;
} dmu_flag_map[] = {
	{ REQ_FAILFAST_DEV, DM_USER_REQ_MAP_FLAG_FAILFAST_DEV },
	{ REQ_FAILFAST_TRANSPORT, DM_USER_REQ_MAP_FLAG_FAILFAST_TRANSPORT },
	{ REQ_FAILFAST_DRIVER, DM_USER_REQ_MAP_FLAG_FAILFAST_DRIVER },
	{ REQ_SYNC, DM_USER_REQ_MAP_FLAG_SYNC },
	{ REQ_META, DM_USER_REQ_MAP_FLAG_META },
	{ REQ_PRIO, DM_USER_REQ_MAP_FLAG_PRIO },
	{ REQ_NOMERGE, DM_USER_REQ_MAP_FLAG_NOMERGE },
	{ REQ_IDLE, DM_USER_REQ_MAP_FLAG_IDLE },
	{ REQ_INTEGRITY, DM_USER_REQ_MAP_FLAG_INTEGRITY },
	{ REQ_FUA, DM_USER_REQ_MAP_FLAG_FUA },
	{ REQ_PREFLUSH, DM_USER_REQ_MAP_FLAG_PREFLUSH },
	{ REQ_RAHEAD, DM_USER_REQ_MAP_FLAG_RAHEAD },
	{ REQ_BACKGROUND, DM_USER_REQ_MAP_FLAG_BACKGROUND },
	{ REQ_NOWAIT, DM_USER_REQ_MAP_FLAG_NOWAIT },
	{ REQ_CGROUP_PUNT, DM_USER_REQ_MAP_FLAG_CGROUP_PUNT },
	{ REQ_NOUNMAP, DM_USER_REQ_MAP_FLAG_NOUNMAP },
	{ REQ_POLLED, DM_USER_REQ_MAP_FLAG_HIPRI },
	{ REQ_DRV, DM_USER_REQ_MAP_FLAG_DRV },
	{ REQ_SWAP, DM_USER_REQ_MAP_FLAG_SWAP },
};

static u32 dmu_bio_flags(const struct bio *bio)
{
	u32 flags = 0;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(dmu_flag_map); i++)
		if (bio->bi_opf & dmu_flag_map[i].bio)
			flags |= dmu_flag_map[i].msg;
	return flags;
}

/* The request type for @bio, or -1 if the target does not forward it. */
static int dmu_bio_type(const struct dmu_target *t, const struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return DM_USER_REQ_MAP_READ;
	case REQ_OP_WRITE:
		return DM_USER_REQ_MAP_WRITE;
	case REQ_OP_DISCARD:
		return t->ops & DM_USER_OP_DISCARD ? DM_USER_REQ_MAP_DISCARD : -1;
	case REQ_OP_SECURE_ERASE:
		return t->ops & DM_USER_OP_SECURE_ERASE ?
			DM_USER_REQ_MAP_SECURE_ERASE : -1;
	case REQ_OP_WRITE_ZEROES:
		return t->ops & DM_USER_OP_WRITE_ZEROES ?
			DM_USER_REQ_MAP_WRITE_ZEROES : -1;
	default:
		return -1;
	}
}

/* Payload bytes that follow the header of the request message. */
static size_t dmu_request_payload(const struct dmu_request *req)
{
	return req->type == DM_USER_REQ_MAP_WRITE ? req->bio->bi_iter.bi_size : 0;
}

/* ---- Request state changes; all with t->lock held. ---- */

static struct dmu_request *dmu_find_held(struct dmu_target *t, u64 seq)
{
	struct dmu_request *req;

	hash_for_each_possible(t->held, req, hnode, seq)
		if (req->seq == seq)
			return req;
	return NULL;
}

static void dmu_hand_out(struct dmu_target *t, struct dmu_channel *ch,
			 struct dmu_request *req)
{
	list_move_tail(&req->entry, &ch->held);
	hash_add(t->held, &req->hnode, req->seq);
	req->ch = ch;
	t->nr_queued--;
	t->nr_inflight[req->class]++;
}

/*
 * Take @req out of the target's books with @status. Its bio joins @b to be
 * ended after unlocking, unless a copier is busy with it: then the copier
 * ends it (see dmu_unbusy).
 */
static void dmu_finish(struct dmu_target *t, struct dmu_request *req,
		       blk_status_t status, struct dmu_batch *b)
{
	struct dmu_channel *ch = req->ch;

	list_del_init(&req->entry);
	if (hash_hashed(&req->hnode))
		hash_del(&req->hnode);
	if (ch) {
		t->nr_inflight[req->class]--;
		if (ch->rd_req == req && !ch->rd_busy)
			ch->rd_req = NULL;
		if (ch->wr.req == req) {
			ch->wr.req = NULL;
			ch->wr.hdr_len = 0;
		}
		req->ch = NULL;
	} else {
		t->nr_queued--;
	}
	if (status)
		t->errors++;
	else
		t->completed++;

	if (req->busy) {
		req->doomed = true;
		req->doom_status = status;
		t->nr_doomed++;
		return;
	}
	req->bio->bi_status = status;
	bio_list_add(&b->bios, req->bio);
}

/* A copier is done with @req. True if it was ended meanwhile. */
static bool dmu_unbusy(struct dmu_request *req, struct dmu_batch *b)
{
	req->busy = false;
	if (!req->doomed)
		return false;
	req->bio->bi_status = req->doom_status;
	bio_list_add(&b->bios, req->bio);
	b->doomed++;
	return true;
}

/* End the bios of @b; t->lock must not be held. */
static void dmu_batch_end(struct dmu_target *t, struct dmu_batch *b)
{
	struct bio *bio;

	while ((bio = bio_list_pop(&b->bios)))
		bio_endio(bio);
	if (!b->doomed)
		return;
	spin_lock_irq(&t->lock);
	t->nr_doomed -= b->doomed;
	if (!t->nr_doomed)
		wake_up_all(&t->drain_wq);
	spin_unlock_irq(&t->lock);
}

/*
 * Wake waiters of @wq in turn until one takes the wake-up: a blocked reader,
 * or an io_uring read waiting by poll, which will retry. wake_up() would wake
 * every poller, and with many io_uring reads pending each request would cost
 * a failed retry of every one of them. Entries that do not report taking a
 * wake-up (epoll's) are all woken, as wake_up() would. The one that took it
 * moves to the back. True if a waiter took it.
 */
static bool dmu_wake_one_on(wait_queue_head_t *wq)
{
	struct wait_queue_entry *curr, *next;
	unsigned long flags;
	bool taken = false;
	int ret;

	spin_lock_irqsave(&wq->lock, flags);
	list_for_each_entry_safe(curr, next, &wq->head, entry) {
		/* A wake_up_all() in progress parks a bookmark here. */
		if (curr->flags & WQ_FLAG_BOOKMARK)
			continue;
		ret = curr->func(curr, TASK_NORMAL, 0,
				 poll_to_key(EPOLLIN | EPOLLRDNORM));
		if (ret) {
			if (ret > 0 && !list_empty(&curr->entry))
				list_move_tail(&curr->entry, &wq->head);
			taken = true;
			break;
		}
	}
	spin_unlock_irqrestore(&wq->lock, flags);
	return taken;
}

/*
 * A request was queued: offer it to the channels in turn, starting after the
 * one that took the last. Daemons give each thread channels of its own, so
 * requests spread over the threads instead of all waking the reads of the
 * first one while it is busy. With t->lock held.
 */
static void dmu_wake_one(struct dmu_target *t)
{
	struct dmu_channel *ch;
	unsigned int n;

	/* Pairs with set_current_state() in a reader's wait_event(). */
	smp_mb();
	for (n = t->nr_channels; n; n--) {
		ch = list_first_entry(&t->channels, struct dmu_channel, node);
		list_rotate_left(&t->channels);
		if (waitqueue_active(&ch->wq) && dmu_wake_one_on(&ch->wq))
			return;
	}
}

/* Every waiter of every channel: the target died, or requests came back. */
static void dmu_wake_all(struct dmu_target *t)
{
	struct dmu_channel *ch;

	spin_lock_irq(&t->lock);
	list_for_each_entry(ch, &t->channels, node)
		wake_up_all(&ch->wq);
	spin_unlock_irq(&t->lock);
}

/*
 * The queue watchdog runs while requests are queued: with no channel open it
 * fails what waited longer than the daemon timeout; with channels open it
 * wakes every waiter if the oldest request has waited a second, in case the
 * one waiter dmu_wake_one() picked will never read (e.g. its io_uring read
 * was cancelled just after the wake-up).
 */
static void dmu_arm_watchdog(struct dmu_target *t)
{
	unsigned long delay = t->nr_channels ? HZ :
		msecs_to_jiffies(READ_ONCE(dm_user_daemon_timeout_msec));

	if (!t->dead && !delayed_work_pending(&t->watchdog))
		queue_delayed_work(system_wq, &t->watchdog, delay);
}

static void dmu_watchdog_fn(struct work_struct *work)
{
	struct dmu_target *t = container_of(to_delayed_work(work),
					    struct dmu_target, watchdog);
	unsigned long tmo = msecs_to_jiffies(READ_ONCE(dm_user_daemon_timeout_msec));
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_request *req, *tmp;
	unsigned long now = jiffies, next = 0;
	bool rearm = false, sweep = false;

	spin_lock_irq(&t->lock);
	if (t->dead || list_empty(&t->queue))
		goto out;
	if (t->nr_channels) {
		req = list_first_entry(&t->queue, struct dmu_request, entry);
		sweep = time_after_eq(now, req->queued_at + HZ);
		queue_delayed_work(system_wq, &t->watchdog, HZ);
		goto out;
	}
	list_for_each_entry_safe(req, tmp, &t->queue, entry) {
		unsigned long since = time_after(t->orphaned_at, req->queued_at) ?
				      t->orphaned_at : req->queued_at;

		if (time_after_eq(now, since + tmo)) {
			dmu_finish(t, req, BLK_STS_IOERR, &b);
		} else if (!rearm || time_before(since + tmo, next)) {
			next = since + tmo;
			rearm = true;
		}
	}
	/* next is after now, so the delay cannot wrap. */
	if (rearm)
		queue_delayed_work(system_wq, &t->watchdog, next - now);
out:
	spin_unlock_irq(&t->lock);
	dmu_batch_end(t, &b);
	if (sweep)
		dmu_wake_all(t);
}

/* ---- Copying between bio pages and userspace, without t->lock. ---- */

static size_t dmu_copy_bio(struct bio *bio, size_t off, size_t len,
			   struct iov_iter *iter, bool to_user)
{
	struct bvec_iter bi = bio->bi_iter;
	size_t done = 0;

	bio_advance_iter(bio, &bi, off);
	while (done < len && bi.bi_size) {
		struct bio_vec bv = bio_iter_iovec(bio, bi);
		size_t n = min_t(size_t, bv.bv_len, len - done);
		size_t copied;

		if (to_user)
			copied = copy_page_to_iter(bv.bv_page, bv.bv_offset, n, iter);
		else
			copied = copy_page_from_iter(bv.bv_page, bv.bv_offset, n, iter);
		done += copied;
		if (copied < n)
			break;
		bio_advance_iter_single(bio, &bi, n);
	}
	return done;
}

static void dmu_fill_header(const struct dmu_request *req,
			    struct dm_user_message *msg)
{
	msg->seq = req->seq;
	msg->type = req->type;
	msg->flags = req->flags;
	msg->sector = req->sector;
	msg->len = req->bio->bi_iter.bi_size;
}

/* Copy @want bytes of @req's message, starting at @off, to @to. */
static size_t dmu_copy_request(const struct dmu_request *req, size_t off,
			       size_t want, struct iov_iter *to)
{
	size_t done = 0;

	if (off < DMU_HDR) {
		struct dm_user_message msg;
		size_t n = min(want, DMU_HDR - off);

		dmu_fill_header(req, &msg);
		done = copy_to_iter((u8 *)&msg + off, n, to);
		if (done < n)
			return done;
	}
	if (done < want)
		done += dmu_copy_bio(req->bio, off + done - DMU_HDR, want - done,
				     to, true);
	return done;
}

/* ---- The control device. ---- */

static bool dmu_readable(struct dmu_target *t, struct dmu_channel *ch)
{
	return READ_ONCE(t->dead) || !list_empty(&t->queue) ||
	       (READ_ONCE(ch->rd_req) && !READ_ONCE(ch->rd_busy));
}

static ssize_t dmu_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct dmu_channel *ch = iocb->ki_filp->private_data;
	struct dmu_target *t = ch->t;
	bool nowait = (iocb->ki_flags & IOCB_NOWAIT) ||
		      (iocb->ki_filp->f_flags & O_NONBLOCK);
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	size_t count = iov_iter_count(to), off, want, n;
	struct dmu_request *req;
	bool in_slot;
	ssize_t ret;

	if (!count)
		return 0;

	spin_lock_irq(&t->lock);
	for (;;) {
		if (ch->rd_req) {
			/* The rest of a request comes before anything new. */
			if (ch->rd_busy) {
				ret = -EBUSY;
				goto out_unlock;
			}
			req = ch->rd_req;
			off = ch->rd_off;
			in_slot = true;
			break;
		}
		if (t->dead) {
			ret = -ENOTBLK;
			goto out_unlock;
		}
		req = list_first_entry_or_null(&t->queue, struct dmu_request, entry);
		if (req) {
			dmu_hand_out(t, ch, req);
			off = 0;
			in_slot = false;
			break;
		}
		if (nowait) {
			ret = -EAGAIN;
			goto out_unlock;
		}
		spin_unlock_irq(&t->lock);
		ret = wait_event_interruptible_exclusive(ch->wq, dmu_readable(t, ch));
		if (ret)
			return ret;
		spin_lock_irq(&t->lock);
	}

	want = min(count, DMU_HDR + dmu_request_payload(req) - off);
	if (off + want < DMU_HDR + dmu_request_payload(req))
		in_slot = true;	/* the rest waits for this channel's next read */
	if (in_slot) {
		ch->rd_req = req;
		ch->rd_off = off;
		ch->rd_busy = true;
	}
	req->busy = true;
	spin_unlock_irq(&t->lock);

	n = dmu_copy_request(req, off, want, to);

	spin_lock_irq(&t->lock);
	if (in_slot)
		ch->rd_busy = false;
	if (dmu_unbusy(req, &b)) {
		/* The target went away meanwhile; the copy is worthless. */
		if (ch->rd_req == req)
			ch->rd_req = NULL;
		ret = -ENOTBLK;
	} else if (n < want) {
		/* The daemon's buffer faulted: its request fails, nothing else. */
		dmu_finish(t, req, BLK_STS_IOERR, &b);
		ret = -EFAULT;
	} else {
		if (in_slot) {
			if (off + n == DMU_HDR + dmu_request_payload(req))
				ch->rd_req = NULL;
			else
				ch->rd_off = off + n;
		}
		ret = n;
	}
out_unlock:
	spin_unlock_irq(&t->lock);
	dmu_batch_end(t, &b);
	return ret;
}

/*
 * A complete response header arrived in @w: find the request and either end
 * it or get ready for its payload. With t->lock held.
 */
static int dmu_take_response(struct dmu_target *t, struct dmu_channel *ch,
			     struct dmu_partial_response *w, struct dmu_batch *b)
{
	struct dmu_request *req;

	if (t->dead)
		return -ENOTBLK;
	req = dmu_find_held(t, w->hdr.seq);
	if (!req || req->ch != ch)
		return -EINVAL;
	if (req->busy)
		return -EBUSY;	/* another read() of this channel is copying it */
	if (ch->rd_req == req)
		ch->rd_req = NULL;	/* answered before fully read: drop the rest */

	switch (w->hdr.type) {
	case DM_USER_RESP_SUCCESS:
		if (req->type == DM_USER_REQ_MAP_READ) {
			hash_del(&req->hnode);
			req->busy = true;
			w->req = req;
			w->off = 0;
		} else {
			dmu_finish(t, req, BLK_STS_OK, b);
		}
		return 0;
	case DM_USER_RESP_ERROR:
		dmu_finish(t, req, BLK_STS_IOERR, b);
		return 0;
	case DM_USER_RESP_UNSUPPORTED:
		dmu_finish(t, req, BLK_STS_NOTSUPP, b);
		return 0;
	default:
		dmu_finish(t, req, BLK_STS_IOERR, b);
		return -EINVAL;
	}
}

/* Stop receiving @w's payload; end the request with @status. */
static void dmu_drop_payload(struct dmu_target *t,
			     struct dmu_partial_response *w,
			     blk_status_t status, struct dmu_batch *b)
{
	if (!dmu_unbusy(w->req, b))
		dmu_finish(t, w->req, status, b);
	w->req = NULL;
}

static ssize_t dmu_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct dmu_channel *ch = iocb->ki_filp->private_data;
	struct dmu_target *t = ch->t;
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_partial_response w = {};
	size_t total = iov_iter_count(from), accepted = 0;
	bool own_slot = false;
	int err = 0;

	spin_lock_irq(&t->lock);
	if (ch->wr_busy) {
		spin_unlock_irq(&t->lock);
		return -EBUSY;
	}
	if (ch->wr.hdr_len || ch->wr.req) {
		/* These bytes continue the response the last write left open. */
		w = ch->wr;
		memset(&ch->wr, 0, sizeof(ch->wr));
		ch->wr_busy = true;
		own_slot = true;
		if (w.req)
			w.req->busy = true;
	}
	spin_unlock_irq(&t->lock);

	while (iov_iter_count(from)) {
		size_t left = iov_iter_count(from), want, n;

		if (!w.req) {
			want = DMU_HDR - w.hdr_len;
			n = copy_from_iter((u8 *)&w.hdr + w.hdr_len, want, from);
			if (n < min(want, left)) {
				err = -EFAULT;
				break;
			}
			w.hdr_len += n;
			if (w.hdr_len < DMU_HDR)
				break;
			w.hdr_len = 0;
			spin_lock_irq(&t->lock);
			err = dmu_take_response(t, ch, &w, &b);
			spin_unlock_irq(&t->lock);
			dmu_batch_end(t, &b);
			if (err)
				break;
			if (!w.req)
				accepted = total - iov_iter_count(from);
			continue;
		}

		want = w.req->bio->bi_iter.bi_size - w.off;
		n = dmu_copy_bio(w.req->bio, w.off, want, from, false);
		w.off += n;
		if (n < min(want, left)) {
			err = -EFAULT;
			break;
		}
		if (n == want) {
			spin_lock_irq(&t->lock);
			dmu_drop_payload(t, &w, BLK_STS_OK, &b);
			spin_unlock_irq(&t->lock);
			dmu_batch_end(t, &b);
			accepted = total - iov_iter_count(from);
		}
	}

	spin_lock_irq(&t->lock);
	if (err) {
		if (w.req)
			dmu_drop_payload(t, &w, BLK_STS_IOERR, &b);
		w.hdr_len = 0;
	} else if (w.req || w.hdr_len) {
		/* This write ends inside a response: keep it for the next. */
		if (!own_slot && (ch->wr_busy || ch->wr.req || ch->wr.hdr_len)) {
			/* Two writes each left a response open: not a stream. */
			if (w.req)
				dmu_drop_payload(t, &w, BLK_STS_IOERR, &b);
			err = -EBUSY;
		} else if (w.req && dmu_unbusy(w.req, &b)) {
			err = -ENOTBLK;
		} else {
			ch->wr = w;
			accepted = total;
		}
	}
	if (own_slot)
		ch->wr_busy = false;
	spin_unlock_irq(&t->lock);
	dmu_batch_end(t, &b);

	if (err && !accepted)
		return err;
	return accepted;
}

static __poll_t dmu_poll(struct file *file, poll_table *wait)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_target *t = ch->t;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &ch->wq, wait);
	spin_lock_irq(&t->lock);
	if (dmu_readable(t, ch))
		mask |= EPOLLIN | EPOLLRDNORM;
	spin_unlock_irq(&t->lock);
	return mask;
}

static long dmu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_target *t = ch->t;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case DM_USER_IOC_GET_INFO: {
		struct dm_user_info info = {
			.version_major = DM_USER_VERSION_MAJOR,
			.version_minor = DM_USER_VERSION_MINOR,
			.version_patch = DM_USER_VERSION_PATCH,
			.features = DMU_FEATURES,
			.ops = t->ops,
			.max_payload = t->max_payload,
			.device_sectors = t->len,
		};

		return copy_to_user(argp, &info, sizeof(info)) ? -EFAULT : 0;
	}
	case DM_USER_IOC_SET_CHANNEL_FLAGS: {
		u64 flags;

		if (copy_from_user(&flags, argp, sizeof(flags)))
			return -EFAULT;
		if (flags & ~(u64)DMU_CHANNEL_FLAGS)
			return -EINVAL;
		spin_lock_irq(&t->lock);
		ch->flags = flags;
		spin_unlock_irq(&t->lock);
		return 0;
	}
	default:
		return -ENOTTY;
	}
}

static void dmu_target_release(struct kref *ref)
{
	kfree(container_of(ref, struct dmu_target, ref));
}

static int dmu_open(struct inode *inode, struct file *file)
{
	/* misc_open holds misc_mtx, so the target is still registered. */
	struct dmu_target *t = container_of(file->private_data,
					    struct dmu_target, misc);
	struct dmu_channel *ch;

	ch = kzalloc(sizeof(*ch), GFP_KERNEL);
	if (!ch)
		return -ENOMEM;
	ch->t = t;
	INIT_LIST_HEAD(&ch->held);
	init_waitqueue_head(&ch->wq);
	kref_get(&t->ref);

	spin_lock_irq(&t->lock);
	list_add_tail(&ch->node, &t->channels);
	t->nr_channels++;
	spin_unlock_irq(&t->lock);

	file->private_data = ch;
	file->f_mode |= FMODE_NOWAIT;
	return stream_open(inode, file);
}

static int dmu_cmp_seq(void *priv, const struct list_head *a,
		       const struct list_head *b)
{
	u64 sa = list_entry(a, struct dmu_request, entry)->seq;
	u64 sb = list_entry(b, struct dmu_request, entry)->seq;

	return sa < sb ? -1 : sa > sb;
}

/* Merge @back (sorted by seq) into the queue, keeping it in seq order. */
static void dmu_requeue(struct dmu_target *t, struct list_head *back)
{
	struct list_head *pos = &t->queue;
	struct dmu_request *req, *tmp;

	list_for_each_entry_safe(req, tmp, back, entry) {
		while (pos->next != &t->queue &&
		       list_entry(pos->next, struct dmu_request, entry)->seq < req->seq)
			pos = pos->next;
		list_move(&req->entry, pos);
		pos = &req->entry;
	}
}

static int dmu_release(struct inode *inode, struct file *file)
{
	struct dmu_channel *ch = file->private_data;
	struct dmu_target *t = ch->t;
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_request *req, *tmp;
	unsigned int requeued = 0;
	bool queued;
	LIST_HEAD(back);

	/* No read() or write() of this file runs any more: nothing is busy. */
	spin_lock_irq(&t->lock);
	list_del(&ch->node);
	t->nr_channels--;
	ch->rd_req = NULL;
	ch->wr.req = NULL;
	list_for_each_entry_safe(req, tmp, &ch->held, entry) {
		if (!(ch->flags & DM_USER_CHANNEL_REQUEUE_ON_CLOSE)) {
			dmu_finish(t, req, BLK_STS_IOERR, &b);
			continue;
		}
		if (hash_hashed(&req->hnode))
			hash_del(&req->hnode);
		req->ch = NULL;
		req->queued_at = jiffies;
		t->nr_inflight[req->class]--;
		t->nr_queued++;
		list_move_tail(&req->entry, &back);
		requeued++;
	}
	if (requeued) {
		list_sort(NULL, &back, dmu_cmp_seq);
		dmu_requeue(t, &back);
	}
	if (!t->nr_channels)
		t->orphaned_at = jiffies;
	if (!list_empty(&t->queue))
		dmu_arm_watchdog(t);
	queued = !list_empty(&t->queue);
	spin_unlock_irq(&t->lock);

	dmu_batch_end(t, &b);
	/* Requeued requests, or a wake-up this channel took and never used. */
	if (queued)
		dmu_wake_all(t);
	kfree(ch);
	kref_put(&t->ref, dmu_target_release);
	return 0;
}

static const struct file_operations dmu_fops = {
	.owner		= THIS_MODULE,
	.open		= dmu_open,
	.release	= dmu_release,
	.read_iter	= dmu_read_iter,
	.write_iter	= dmu_write_iter,
	.poll		= dmu_poll,
	.unlocked_ioctl	= dmu_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

/* ---- The device-mapper target. ---- */

static bool dmu_valid_name(const char *name)
{
	const char *c;

	if (!*name || strlen(name) > DMU_NAME_MAX ||
	    !strcmp(name, ".") || !strcmp(name, ".."))
		return false;
	for (c = name; *c; c++)
		if (!isalnum(*c) && !strchr("-_.+:@", *c))
			return false;
	return true;
}

static int dmu_parse_options(struct dmu_target *t, struct dm_arg_set *as,
			     char **error)
{
	static const struct dm_arg group = {
		0, 6, "Invalid number of optional arguments"
	};
	unsigned int argc;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&group, as, &argc, error);
	if (r)
		return r;
	while (argc--) {
		const char *opt = dm_shift_arg(as);

		if (!strcasecmp(opt, "no_flush")) {
			t->ops &= ~DM_USER_OP_FLUSH;
		} else if (!strcasecmp(opt, "no_discard")) {
			t->ops &= ~DM_USER_OP_DISCARD;
		} else if (!strcasecmp(opt, "no_write_zeroes")) {
			t->ops &= ~DM_USER_OP_WRITE_ZEROES;
		} else if (!strcasecmp(opt, "no_secure_erase")) {
			t->ops &= ~DM_USER_OP_SECURE_ERASE;
		} else if (!strcasecmp(opt, "max_payload") && argc) {
			argc--;
			if (kstrtouint(dm_shift_arg(as), 10, &t->max_payload) ||
			    t->max_payload < PAGE_SIZE ||
			    t->max_payload > DMU_MAX_PAYLOAD ||
			    t->max_payload % PAGE_SIZE) {
				*error = "max_payload must be a multiple of the page size, at most 64 MiB";
				return -EINVAL;
			}
			t->max_payload_set = true;
		} else {
			*error = "Unknown optional argument";
			return -EINVAL;
		}
	}
	if (as->argc) {
		*error = "Too many arguments";
		return -EINVAL;
	}
	return 0;
}

/* <start> <length> <control-name> [<#opt_args> <opt>...] */
static int user_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct dmu_target *t, *other;
	char dummy;
	int r;

	if (argc < 3) {
		ti->error = "Invalid argument count";
		return -EINVAL;
	}
	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t) {
		ti->error = "Cannot allocate target";
		return -ENOMEM;
	}
	spin_lock_init(&t->lock);
	INIT_LIST_HEAD(&t->queue);
	INIT_LIST_HEAD(&t->channels);
	hash_init(t->held);
	init_waitqueue_head(&t->drain_wq);
	INIT_DELAYED_WORK(&t->watchdog, dmu_watchdog_fn);
	kref_init(&t->ref);
	t->orphaned_at = jiffies;
	t->ops = DMU_ALL_OPS;
	t->max_payload = DMU_DEFAULT_PAYLOAD;

	r = -EINVAL;
	if (sscanf(argv[0], "%llu%c", &t->start, &dummy) != 1 ||
	    sscanf(argv[1], "%llu%c", &t->len, &dummy) != 1) {
		ti->error = "Invalid start or length";
		goto bad;
	}
	if (t->len != ti->len || t->start + t->len < t->start) {
		ti->error = "Length must equal the target's length";
		goto bad;
	}
	if (!dmu_valid_name(argv[2])) {
		ti->error = "Invalid control name (1-64 of A-Z a-z 0-9 - _ . + : @)";
		goto bad;
	}
	strscpy(t->name, argv[2], sizeof(t->name));
	snprintf(t->devname, sizeof(t->devname), "dm-user/%s", t->name);
	dm_consume_args(&as, 3);
	r = dmu_parse_options(t, &as, &ti->error);
	if (r)
		goto bad;
	r = dm_set_target_max_io_len(ti, t->max_payload >> SECTOR_SHIFT);
	if (r)
		goto bad;

	t->misc.minor = MISC_DYNAMIC_MINOR;
	t->misc.name = t->devname;	/* devtmpfs: /dev/dm-user/<name> */
	t->misc.fops = &dmu_fops;
	t->misc.mode = 0600;

	mutex_lock(&dmu_names_lock);
	list_for_each_entry(other, &dmu_names, name_node) {
		if (!strcmp(other->name, t->name)) {
			mutex_unlock(&dmu_names_lock);
			ti->error = "Control name already in use";
			r = -EBUSY;
			goto bad;
		}
	}
	r = misc_register(&t->misc);
	if (r) {
		mutex_unlock(&dmu_names_lock);
		ti->error = "Cannot register the control device";
		goto bad;
	}
	list_add(&t->name_node, &dmu_names);
	mutex_unlock(&dmu_names_lock);

	ti->private = t;
	ti->per_io_data_size = sizeof(struct dmu_request);
	if (t->ops & DM_USER_OP_FLUSH) {
		ti->num_flush_bios = 1;
		ti->flush_supported = true;
	}
	if (t->ops & DM_USER_OP_DISCARD) {
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
	}
	if (t->ops & DM_USER_OP_SECURE_ERASE)
		ti->num_secure_erase_bios = 1;
	if (t->ops & DM_USER_OP_WRITE_ZEROES)
		ti->num_write_zeroes_bios = 1;
	return 0;

bad:
	kfree(t);
	return r;
}

static void user_dtr(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_request *req, *tmp;
	struct dmu_channel *ch;

	spin_lock_irq(&t->lock);
	t->dead = true;
	list_for_each_entry_safe(req, tmp, &t->queue, entry)
		dmu_finish(t, req, BLK_STS_IOERR, &b);
	list_for_each_entry(ch, &t->channels, node)
		list_for_each_entry_safe(req, tmp, &ch->held, entry)
			dmu_finish(t, req, BLK_STS_IOERR, &b);
	spin_unlock_irq(&t->lock);
	dmu_batch_end(t, &b);

	/* Blocked readers return -ENOTBLK; pollers see EPOLLIN. */
	dmu_wake_all(t);
	misc_deregister(&t->misc);
	mutex_lock(&dmu_names_lock);
	list_del(&t->name_node);
	mutex_unlock(&dmu_names_lock);
	cancel_delayed_work_sync(&t->watchdog);

	/* Copiers caught mid-copy end their bios; dm frees them after us. */
	spin_lock_irq(&t->lock);
	wait_event_lock_irq(t->drain_wq, !t->nr_doomed, t->lock);
	spin_unlock_irq(&t->lock);

	kref_put(&t->ref, dmu_target_release);
}

static int user_map(struct dm_target *ti, struct bio *bio)
{
	struct dmu_target *t = ti->private;
	struct dmu_request *req = dm_per_bio_data(bio, sizeof(*req));
	int type = dmu_bio_type(t, bio);
	unsigned long flags;

	if (type < 0) {
		bio->bi_status = BLK_STS_NOTSUPP;
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}

	req->bio = bio;
	req->ch = NULL;
	INIT_HLIST_NODE(&req->hnode);
	req->type = type;
	req->flags = dmu_bio_flags(bio);
	req->sector = bio_sectors(bio) ?
		t->start + dm_target_offset(ti, bio->bi_iter.bi_sector) : 0;
	if (type == DM_USER_REQ_MAP_READ)
		req->class = DMU_CLASS_READ;
	else if (type == DM_USER_REQ_MAP_WRITE && bio_has_data(bio))
		req->class = DMU_CLASS_WRITE;
	else
		req->class = DMU_CLASS_OTHER;
	req->busy = false;
	req->doomed = false;
	req->queued_at = jiffies;

	/* Never sleeps: REQ_NOWAIT bios need no special path. */
	spin_lock_irqsave(&t->lock, flags);
	req->seq = t->next_seq++;
	list_add_tail(&req->entry, &t->queue);
	t->nr_queued++;
	dmu_arm_watchdog(t);
	dmu_wake_one(t);
	spin_unlock_irqrestore(&t->lock, flags);
	return DM_MAPIO_SUBMITTED;
}

static void user_status(struct dm_target *ti, status_type_t type,
			unsigned int status_flags, char *result,
			unsigned int maxlen)
{
	struct dmu_target *t = ti->private;
	unsigned int sz = 0, nr_opts, queued, inflight[DMU_NR_CLASSES], channels;
	u64 completed, errors;
	u64 off = DMU_ALL_OPS & ~t->ops;

	switch (type) {
	case STATUSTYPE_INFO:
		spin_lock_irq(&t->lock);
		queued = t->nr_queued;
		memcpy(inflight, t->nr_inflight, sizeof(inflight));
		completed = t->completed;
		errors = t->errors;
		channels = t->nr_channels;
		spin_unlock_irq(&t->lock);
		DMEMIT("queued=%u inflight_read=%u inflight_write=%u inflight_other=%u completed=%llu errors=%llu channels=%u",
		       queued, inflight[DMU_CLASS_READ], inflight[DMU_CLASS_WRITE],
		       inflight[DMU_CLASS_OTHER], completed, errors, channels);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%llu %llu %s", t->start, t->len, t->name);
		nr_opts = hweight64(off) + (t->max_payload_set ? 2 : 0);
		if (!nr_opts)
			break;
		DMEMIT(" %u", nr_opts);
		if (off & DM_USER_OP_FLUSH)
			DMEMIT(" no_flush");
		if (off & DM_USER_OP_DISCARD)
			DMEMIT(" no_discard");
		if (off & DM_USER_OP_WRITE_ZEROES)
			DMEMIT(" no_write_zeroes");
		if (off & DM_USER_OP_SECURE_ERASE)
			DMEMIT(" no_secure_erase");
		if (t->max_payload_set)
			DMEMIT(" max_payload %u", t->max_payload);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",control=%s,ops=%llu,max_payload=%u;",
		       t->name, t->ops, t->max_payload);
		break;
	}
}

/* No underlying devices; dm-table needs this to apply io_hints and NOWAIT. */
static int user_iterate_devices(struct dm_target *ti,
				iterate_devices_callout_fn fn, void *data)
{
	return 0;
}

static void user_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct dmu_target *t = ti->private;
	unsigned int payload_sectors = t->max_payload >> SECTOR_SHIFT;

	limits->max_hw_sectors = payload_sectors;
	limits->max_hw_discard_sectors = 0;
	limits->max_write_zeroes_sectors = 0;
	limits->max_secure_erase_sectors = 0;
	if (t->ops & DM_USER_OP_DISCARD) {
		limits->max_hw_discard_sectors = DMU_MAX_EXTENT_SECTORS;
		limits->discard_granularity = SECTOR_SIZE;
	}
	if (t->ops & DM_USER_OP_WRITE_ZEROES)
		limits->max_write_zeroes_sectors = DMU_MAX_EXTENT_SECTORS;
	if (t->ops & DM_USER_OP_SECURE_ERASE)
		limits->max_secure_erase_sectors = DMU_MAX_EXTENT_SECTORS;
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0)
	/* From 6.9 the block layer derives these from the _hw_ limits. */
	limits->max_sectors = payload_sectors;
	limits->max_discard_sectors = limits->max_hw_discard_sectors;
#endif
}

static struct target_type user_target = {
	.name		 = "user",
	.version	 = { DM_USER_VERSION_MAJOR, DM_USER_VERSION_MINOR,
			     DM_USER_VERSION_PATCH },
	.features	 = DM_TARGET_NOWAIT,
	.module		 = THIS_MODULE,
	.ctr		 = user_ctr,
	.dtr		 = user_dtr,
	.map		 = user_map,
	.status		 = user_status,
	.iterate_devices = user_iterate_devices,
	.io_hints	 = user_io_hints,
};

static int __init dm_user_init(void)
{
	int r = dm_register_target(&user_target);

	if (r < 0)
		DMERR("register failed %d", r);
	return r;
}

static void __exit dm_user_exit(void)
{
	dm_unregister_target(&user_target);
}

module_init(dm_user_init);
module_exit(dm_user_exit);

MODULE_DESCRIPTION(DM_NAME " target handing block I/O to a userspace daemon");
MODULE_LICENSE("GPL");
