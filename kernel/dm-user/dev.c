// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-user's control device: each open() of /dev/dm-user/NAME is a channel.
 * read() hands out requests (a struct dm_user_message header, plus the data
 * of a WRITE) in seq order; write() takes the responses (header, plus the
 * data of a successful READ). The wire ABI is Android's dm-user, kept
 * byte-compatible; see include/uapi/linux/dm-user.h and README.md. The
 * request states and the lock order are in dm-user-internal.h.
 */

#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/list_sort.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uio.h>

#include "dm-user-compat.h"
#include "dm-user-internal.h"

#define DMU_FEATURES (DM_USER_FEATURE_POLL | DM_USER_FEATURE_WHOLE_MESSAGE | \
		      DM_USER_FEATURE_MULTI_RESPONSE | DM_USER_FEATURE_REQUEUE | \
		      DM_USER_FEATURE_TARGET_NOWAIT | DM_USER_FEATURE_CLAIM)
#define DMU_CHANNEL_FLAGS DM_USER_CHANNEL_REQUEUE_ON_CLOSE

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
void dmu_finish(struct dmu_target *t, struct dmu_request *req,
		       blk_status_t status, struct dmu_batch *b)
{
	struct dmu_channel *ch = req->ch;

	list_del_init(&req->entry);
	if (hash_hashed(&req->hnode))
		hash_del(&req->hnode);
	t->nr_requests--;
	if (ch) {
		t->nr_inflight[req->class]--;
		if (ch->rd_req == req && !ch->rd_busy)
			WRITE_ONCE(ch->rd_req, NULL);
		if (ch->wr.req == req) {
			ch->wr.req = NULL;
			ch->wr.hdr_len = 0;
		}
		req->ch = NULL;
	} else {
		t->nr_queued--;
	}
	if (status == BLK_STS_DM_REQUEUE)
		t->requeued++;
	else if (status)
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
void dmu_batch_end(struct dmu_target *t, struct dmu_batch *b)
{
	struct bio *bio;
	bool drained, ended = false;

	while ((bio = bio_list_pop(&b->bios))) {
		bio_endio(bio);
		ended = true;
	}
	/* Room in the queue; pairs with the barrier in map's io_wait_event(). */
	if (ended && wq_has_sleeper(&t->depth_wq))
		wake_up_all(&t->depth_wq);
	if (!b->doomed)
		return;
	spin_lock(&t->lock);
	t->nr_doomed -= b->doomed;
	drained = !t->nr_doomed;
	spin_unlock(&t->lock);
	/* The destructor waits for this; our channel's reference keeps @t. */
	if (drained)
		wake_up_all(&t->drain_wq);
}

/*
 * A request was queued: wake every poller and one blocked reader (readers
 * wait exclusively), as a pipe does. With t->lock dropped.
 */
void dmu_wake_one(struct dmu_target *t)
{
	/* Pairs with the barrier in a reader's prepare_to_wait(). */
	if (wq_has_sleeper(&t->wq))
		wake_up_interruptible_poll(&t->wq, EPOLLIN | EPOLLRDNORM);
}

/* Every waiter: the target died, or several requests came back at once. */
void dmu_wake_all(struct dmu_target *t)
{
	wake_up_all(&t->wq);
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

/* Another process claimed the target: this channel gets no requests. */
static bool dmu_foreign(struct dmu_target *t, struct dmu_channel *ch)
{
	return READ_ONCE(t->claim) && !READ_ONCE(ch->claimant);
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
	bool in_slot, slept = false, pass_on;
	ssize_t ret;

	if (!count)
		return 0;

	spin_lock(&t->lock);
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
		if (t->claim && !ch->claimant) {
			ret = -EBUSY;
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
		spin_unlock(&t->lock);
		ret = wait_event_interruptible_exclusive(t->wq, dmu_readable(t, ch) ||
							 dmu_foreign(t, ch));
		if (ret) {
			/* A wake-up this reader took must not be lost. */
			if (!list_empty(&t->queue))
				dmu_wake_one(t);
			return ret;
		}
		slept = true;
		spin_lock(&t->lock);
	}

	want = min(count, DMU_HDR + dmu_request_payload(req) - off);
	if (off + want < DMU_HDR + dmu_request_payload(req))
		in_slot = true;	/* the rest waits for this channel's next read */
	if (in_slot) {
		WRITE_ONCE(ch->rd_req, req);
		ch->rd_off = off;
		WRITE_ONCE(ch->rd_busy, true);
	}
	req->busy = true;
	/* Woken, but what we took was not from the queue, or more wait there. */
	pass_on = slept && !list_empty(&t->queue);
	spin_unlock(&t->lock);
	if (pass_on)
		dmu_wake_one(t);

	n = dmu_copy_request(req, off, want, to);

	spin_lock(&t->lock);
	if (in_slot)
		WRITE_ONCE(ch->rd_busy, false);
	if (dmu_unbusy(req, &b)) {
		/* The target went away meanwhile; the copy is worthless. */
		if (ch->rd_req == req)
			WRITE_ONCE(ch->rd_req, NULL);
		ret = -ENOTBLK;
	} else if (n < want) {
		/* The daemon's buffer faulted: its request fails, nothing else. */
		dmu_finish(t, req, BLK_STS_IOERR, &b);
		ret = -EFAULT;
	} else {
		if (in_slot) {
			if (off + n == DMU_HDR + dmu_request_payload(req))
				WRITE_ONCE(ch->rd_req, NULL);
			else
				ch->rd_off = off + n;
		}
		ret = n;
	}
out_unlock:
	spin_unlock(&t->lock);
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
	if (ch->rd_req == req)	/* answered before fully read: drop the rest */
		WRITE_ONCE(ch->rd_req, NULL);

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

	spin_lock(&t->lock);
	if (ch->wr_busy) {
		spin_unlock(&t->lock);
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
	spin_unlock(&t->lock);

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
			spin_lock(&t->lock);
			err = dmu_take_response(t, ch, &w, &b);
			spin_unlock(&t->lock);
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
			spin_lock(&t->lock);
			dmu_drop_payload(t, &w, BLK_STS_OK, &b);
			spin_unlock(&t->lock);
			dmu_batch_end(t, &b);
			accepted = total - iov_iter_count(from);
		}
	}

	spin_lock(&t->lock);
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
	spin_unlock(&t->lock);
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

	poll_wait(file, &t->wq, wait);
	/* As fuse does: the daemon's cue to exit (read gives ENOTBLK). */
	if (READ_ONCE(t->dead))
		return EPOLLERR | EPOLLHUP;
	if (dmu_foreign(t, ch))
		return EPOLLERR;
	if (dmu_readable(t, ch))
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

/*
 * DM_USER_IOC_CLAIM: the target becomes the calling process's. Every channel
 * it opened so far becomes a claimant (one walk of the channels, not on the
 * I/O path); those it opens later are claimants from the start (dmu_open).
 */
static int dmu_claim(struct dmu_target *t, struct dmu_channel *ch)
{
	struct dmu_channel *other;
	bool woke = false;
	int ret = 0;

	spin_lock(&t->lock);
	if (t->claim) {
		if (t->claim != ch->opener || !ch->claimant)
			ret = -EBUSY;
	} else if (ch->opener != task_tgid(current)) {
		ret = -EBUSY;	/* a channel inherited from another process */
	} else {
		WRITE_ONCE(t->claim, get_pid(ch->opener));
		list_for_each_entry(other, &t->channels, node) {
			if (other->opener != ch->opener)
				continue;
			WRITE_ONCE(other->claimant, true);
			t->nr_claimant++;
		}
		woke = true;
	}
	spin_unlock(&t->lock);
	/* Readers of other processes' channels return EBUSY now. */
	if (woke)
		dmu_wake_all(t);
	return ret;
}

/*
 * Without CAP_SYS_ADMIN, the table's owner=, group= and mode= must admit the
 * opener, as the permission bits of a file would.
 */
static int dmu_may_open(struct dmu_target *t, struct file *file)
{
	bool access_set;
	kuid_t owner;
	kgid_t group;
	umode_t mode;

	if (capable(CAP_SYS_ADMIN))
		return 0;
	/* A resume may apply another table's rules meanwhile. */
	spin_lock(&t->lock);
	access_set = t->access_set;
	owner = t->owner;
	group = t->group;
	mode = t->mode;
	spin_unlock(&t->lock);
	if (!access_set)
		return -EPERM;
	if (uid_eq(current_fsuid(), owner))
		mode >>= 6;
	else if (in_group_p(group))
		mode >>= 3;
	if (((file->f_mode & FMODE_READ) && !(mode & 04)) ||
	    ((file->f_mode & FMODE_WRITE) && !(mode & 02)))
		return -EACCES;
	return 0;
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
		spin_lock(&t->lock);
		ch->flags = flags;
		spin_unlock(&t->lock);
		return 0;
	}
	case DM_USER_IOC_CLAIM:
		return dmu_claim(t, ch);
	default:
		return -ENOTTY;
	}
}

static int dmu_open(struct inode *inode, struct file *file)
{
	/* chrdev_open holds a reference on the cdev, and so on @t. */
	struct dmu_target *t = container_of(inode->i_cdev, struct dmu_target,
					    cdev);
	struct dmu_channel *ch;
	int ret;

	ret = dmu_may_open(t, file);
	if (ret)
		return ret;
	/* Charged to the opener: its memory cgroup pays for its channels. */
	ch = kzalloc(sizeof(*ch), GFP_KERNEL_ACCOUNT);
	if (!ch)
		return -ENOMEM;
	ch->t = t;
	INIT_LIST_HEAD(&ch->held);
	ch->opener = get_pid(task_tgid(current));

	spin_lock(&t->lock);
	if (t->dead) {
		/* Opened just as the last table went away. */
		spin_unlock(&t->lock);
		put_pid(ch->opener);
		kfree(ch);
		return -ENODEV;
	}
	if (t->claim && t->claim != ch->opener) {
		spin_unlock(&t->lock);
		put_pid(ch->opener);
		kfree(ch);
		return -EBUSY;
	}
	if (t->claim) {
		ch->claimant = true;
		t->nr_claimant++;
	}
	list_add_tail(&ch->node, &t->channels);
	t->nr_channels++;
	spin_unlock(&t->lock);
	get_device(&t->dev);

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
	struct pid *unclaimed = NULL;
	unsigned int requeued = 0;
	bool pass_on;
	LIST_HEAD(back);

	/* No read() or write() of this file runs any more: nothing is busy. */
	spin_lock(&t->lock);
	list_del(&ch->node);
	t->nr_channels--;
	if (ch->claimant && !--t->nr_claimant) {
		unclaimed = t->claim;
		WRITE_ONCE(t->claim, NULL);
	}
	WRITE_ONCE(ch->rd_req, NULL);
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
	/*
	 * Requests came back, or a wake-up meant for a queued request may have
	 * gone to a poll of this file that was cancelled on its way out (an
	 * exclusive io_uring poll takes the wake-up even while being cancelled):
	 * the other waiters look again.
	 */
	pass_on = requeued || !list_empty(&t->queue);
	spin_unlock(&t->lock);

	dmu_batch_end(t, &b);
	if (pass_on)
		dmu_wake_all(t);
	put_pid(unclaimed);
	put_pid(ch->opener);
	kfree(ch);
	put_device(&t->dev);
	return 0;
}

const struct file_operations dmu_fops = {
	.owner		= THIS_MODULE,
	.open		= dmu_open,
	.release	= dmu_release,
	.read_iter	= dmu_read_iter,
	.write_iter	= dmu_write_iter,
	.poll		= dmu_poll,
	.unlocked_ioctl	= dmu_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

/* ---- Registration: one minor of our own region per control device. ---- */

/*
 * Our own region and minors, not misc's: 6.1 has 128 dynamic misc minors for
 * the whole system, and a node with thousands of devices needs more.
 */
#define DMU_MAX_MINORS (1U << MINORBITS)

static dev_t dmu_devt;
static DEFINE_IDA(dmu_minors);

static struct class dmu_class = {
	.name = "dm-user",
};

/* devtmpfs creates /dev/dm-user/<name>. */
static char *dmu_devnode(DMU_DEVNODE_CONST struct device *dev, umode_t *mode,
			 kuid_t *uid, kgid_t *gid)
{
	const struct dmu_target *t = container_of(dev, struct dmu_target, dev);

	/*
	 * With owner=, group= or mode= the node lets anyone try, and open()
	 * applies the table's rules (dmu_may_open()), which a reload may change.
	 */
	if (mode)
		*mode = t->access_set ? 0666 : 0600;
	return kasprintf(GFP_KERNEL, "dm-user/%s", t->name);
}

/* The last reference is gone: the last table and the last channel. */
static void dmu_dev_release(struct device *dev)
{
	struct dmu_target *t = container_of(dev, struct dmu_target, dev);

	ida_free(&dmu_minors, MINOR(dev->devt));
	kfree(t);
}

static const struct device_type dmu_device_type = {
	.name = "dm-user",
	.devnode = dmu_devnode,
	.release = dmu_dev_release,
};

/*
 * Create /dev/dm-user/<t->name>. From here on @t belongs to its device: it is
 * freed by the last put_device(), and on failure it is freed already.
 */
int dmu_control_register(struct dmu_target *t)
{
	int minor, r;

	minor = ida_alloc_max(&dmu_minors, DMU_MAX_MINORS - 1, GFP_KERNEL);
	if (minor < 0) {
		kfree(t);
		return minor;
	}
	device_initialize(&t->dev);
	t->dev.class = &dmu_class;
	t->dev.type = &dmu_device_type;
	t->dev.devt = MKDEV(MAJOR(dmu_devt), minor);
	cdev_init(&t->cdev, &dmu_fops);
	t->cdev.owner = THIS_MODULE;
	r = dev_set_name(&t->dev, "%s", t->name);
	if (!r)
		r = cdev_device_add(&t->cdev, &t->dev);
	if (r)
		put_device(&t->dev);
	return r;
}

/* No new opens; open files keep @t until they close. */
void dmu_control_unregister(struct dmu_target *t)
{
	cdev_device_del(&t->cdev, &t->dev);
}

int dmu_control_init(void)
{
	int r = alloc_chrdev_region(&dmu_devt, 0, DMU_MAX_MINORS, "dm-user");

	if (r)
		return r;
	r = class_register(&dmu_class);
	if (r)
		unregister_chrdev_region(dmu_devt, DMU_MAX_MINORS);
	return r;
}

void dmu_control_exit(void)
{
	class_unregister(&dmu_class);
	unregister_chrdev_region(dmu_devt, DMU_MAX_MINORS);
}
