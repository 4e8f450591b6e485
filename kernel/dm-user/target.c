// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-user: a device-mapper target that hands every bio to a userspace daemon.
 *
 * A table line "<start> <length> user <start> <length> <control-name> [opts]"
 * creates the control device /dev/dm-user/<control-name> (dev.c), through
 * which daemons read requests and write responses. This file is the target
 * itself: table parsing, map, status, and the no-daemon watchdog. The
 * request states and the lock order are in dm-user-internal.h.
 */

#include <linux/ctype.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "dm-user-compat.h"
#include "dm-user-internal.h"

#define DM_MSG_PREFIX "user"

#define DMU_DEFAULT_PAYLOAD	(1U << 20)
#define DMU_MAX_PAYLOAD		(64U << 20)
/* Largest DISCARD / WRITE_ZEROES / SECURE_ERASE extent in one request. */
#define DMU_MAX_EXTENT_SECTORS	((1U << 30) >> SECTOR_SHIFT)
/* Requests mapped and not ended, at most (queued plus held by daemons). */
#define DMU_DEFAULT_QUEUE_DEPTH	1024
#define DMU_MAX_QUEUE_DEPTH	65536

static unsigned int dm_user_daemon_timeout_msec = 4000;
module_param(dm_user_daemon_timeout_msec, uint, 0644);
MODULE_PARM_DESC(dm_user_daemon_timeout_msec,
		 "How long queued requests wait for a daemon when no channel is open (ms)");

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
static int dmu_bio_type(u64 ops, const struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return DM_USER_REQ_MAP_READ;
	case REQ_OP_WRITE:
		return DM_USER_REQ_MAP_WRITE;
	case REQ_OP_DISCARD:
		return ops & DM_USER_OP_DISCARD ? DM_USER_REQ_MAP_DISCARD : -1;
	case REQ_OP_SECURE_ERASE:
		return ops & DM_USER_OP_SECURE_ERASE ?
			DM_USER_REQ_MAP_SECURE_ERASE : -1;
	case REQ_OP_WRITE_ZEROES:
		return ops & DM_USER_OP_WRITE_ZEROES ?
			DM_USER_REQ_MAP_WRITE_ZEROES : -1;
	default:
		return -1;
	}
}

/* ---- The watchdog: the no-daemon timeout and request_timeout. ---- */

/* The earliest of the deadlines seen, in jiffies. */
struct dmu_deadline {
	unsigned long at;
	bool set;
};

static void dmu_deadline_add(struct dmu_deadline *d, unsigned long at)
{
	if (!d->set || time_before(at, d->at)) {
		d->at = at;
		d->set = true;
	}
}

/*
 * The watchdog keeps two deadlines, and runs only while it has one: with no
 * channel open, queued requests fail once they waited longer than the daemon
 * timeout; with request_timeout set, any request unanswered that long is
 * ended. Nothing else depends on it: a queued request reaches a waiting
 * reader by its wake-up. With t->lock held.
 */
void dmu_arm_watchdog(struct dmu_target *t)
{
	unsigned long delay = msecs_to_jiffies(READ_ONCE(dm_user_daemon_timeout_msec));

	if (t->request_timeout)
		delay = t->nr_channels ? msecs_to_jiffies(t->request_timeout) :
			min(delay, msecs_to_jiffies(t->request_timeout));
	else if (t->nr_channels)
		return;
	if (!t->dead && !delayed_work_pending(&t->watchdog))
		queue_delayed_work(system_wq, &t->watchdog, delay);
}

/*
 * End what on @list waited longer than request_timeout: pushed back to dm
 * core during a noflush suspend (it resubmits them after resume), failed
 * otherwise.
 */
static void dmu_expire_list(struct dmu_target *t, struct list_head *list,
			    unsigned long now, struct dmu_deadline *d,
			    struct dmu_batch *b)
{
	unsigned long tmo = msecs_to_jiffies(t->request_timeout);
	bool requeue = t->noflush_suspending;
	struct dmu_request *req, *tmp;

	list_for_each_entry_safe(req, tmp, list, entry) {
		if (time_before(now, req->queued_at + tmo)) {
			dmu_deadline_add(d, req->queued_at + tmo);
			continue;
		}
		DMWARN_LIMIT("%s: request %llu (%s, sector %llu, %u bytes) unanswered after %u ms: %s",
			     t->name, req->seq, req->ch ? "read" : "not read",
			     req->sector, req->bio->bi_iter.bi_size,
			     t->request_timeout, requeue ? "pushed back" : "failed");
		t->timed_out++;
		dmu_finish(t, req, requeue ? BLK_STS_DM_REQUEUE : BLK_STS_IOERR, b);
	}
}

static void dmu_watchdog_fn(struct work_struct *work)
{
	struct dmu_target *t = container_of(to_delayed_work(work),
					    struct dmu_target, watchdog);
	unsigned long tmo = msecs_to_jiffies(READ_ONCE(dm_user_daemon_timeout_msec));
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_deadline next = {};
	struct dmu_request *req, *tmp;
	struct dmu_channel *ch;
	unsigned long now = jiffies;

	spin_lock(&t->lock);
	if (t->dead)
		goto out;
	if (t->request_timeout) {
		dmu_expire_list(t, &t->queue, now, &next, &b);
		list_for_each_entry(ch, &t->channels, node)
			dmu_expire_list(t, &ch->held, now, &next, &b);
	}
	/* With a daemon attached, it takes over what is queued. */
	if (t->nr_channels)
		goto rearm;
	list_for_each_entry_safe(req, tmp, &t->queue, entry) {
		unsigned long since = time_after(t->orphaned_at, req->queued_at) ?
				      t->orphaned_at : req->queued_at;

		if (time_after_eq(now, since + tmo)) {
			DMERR_LIMIT("%s: no daemon for %u ms: failing request seq %llu, sector %llu, %u bytes",
				    t->name, jiffies_to_msecs(tmo), req->seq,
				    req->sector, req->bio->bi_iter.bi_size);
			dmu_finish(t, req, BLK_STS_IOERR, &b);
		} else {
			dmu_deadline_add(&next, since + tmo);
		}
	}
rearm:
	/* Every deadline kept is after now, so the delay cannot wrap. */
	if (next.set)
		queue_delayed_work(system_wq, &t->watchdog, next.at - now);
out:
	spin_unlock(&t->lock);
	dmu_batch_end(t, &b);
}

/* Fail or push back everything queued, and with @held what is held too. */
static unsigned int dmu_end_all(struct dmu_target *t, bool held,
				blk_status_t status)
{
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_request *req, *tmp;
	struct dmu_channel *ch;
	unsigned int n = 0;

	spin_lock(&t->lock);
	list_for_each_entry_safe(req, tmp, &t->queue, entry) {
		dmu_finish(t, req, status, &b);
		n++;
	}
	if (held) {
		list_for_each_entry(ch, &t->channels, node) {
			list_for_each_entry_safe(req, tmp, &ch->held, entry) {
				dmu_finish(t, req, status, &b);
				n++;
			}
		}
	}
	spin_unlock(&t->lock);
	dmu_batch_end(t, &b);
	return n;
}

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

/* A uint option's value, after its name. */
static int dmu_uint_arg(struct dm_arg_set *as, unsigned int *argc,
			unsigned int *val)
{
	if (!*argc)
		return -EINVAL;
	(*argc)--;
	return kstrtouint(dm_shift_arg(as), 10, val);
}

static int dmu_parse_options(struct dmu_table *tt, struct dm_arg_set *as,
			     char **error)
{
	static const struct dm_arg group = {
		0, 10, "Invalid number of optional arguments"
	};
	bool mode_set = false;
	unsigned int argc, id;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&group, as, &argc, error);
	if (r)
		return r;
	while (argc--) {
		const char *opt = dm_shift_arg(as);

		if (!strcasecmp(opt, "no_flush")) {
			tt->ops &= ~DM_USER_OP_FLUSH;
		} else if (!strcasecmp(opt, "no_discard")) {
			tt->ops &= ~DM_USER_OP_DISCARD;
		} else if (!strcasecmp(opt, "no_write_zeroes")) {
			tt->ops &= ~DM_USER_OP_WRITE_ZEROES;
		} else if (!strcasecmp(opt, "no_secure_erase")) {
			tt->ops &= ~DM_USER_OP_SECURE_ERASE;
		} else if (!strcasecmp(opt, "max_payload")) {
			if (dmu_uint_arg(as, &argc, &tt->max_payload) ||
			    tt->max_payload < PAGE_SIZE ||
			    tt->max_payload > DMU_MAX_PAYLOAD ||
			    tt->max_payload % PAGE_SIZE) {
				*error = "max_payload must be a multiple of the page size, at most 64 MiB";
				return -EINVAL;
			}
			tt->max_payload_set = true;
		} else if (!strncasecmp(opt, "request_timeout=", 16)) {
			if (kstrtouint(opt + 16, 10, &tt->request_timeout) ||
			    tt->request_timeout > DMU_MAX_REQUEST_TIMEOUT) {
				*error = "request_timeout must be 0 (none) to 86400000 ms";
				return -EINVAL;
			}
		} else if (!strncasecmp(opt, "queue_depth=", 12)) {
			if (kstrtouint(opt + 12, 10, &tt->queue_depth) ||
			    !tt->queue_depth || tt->queue_depth > DMU_MAX_QUEUE_DEPTH) {
				*error = "queue_depth must be 1-65536";
				return -EINVAL;
			}
			tt->queue_depth_set = true;
		} else if (!strncasecmp(opt, "owner=", 6)) {
			if (kstrtouint(opt + 6, 10, &id) ||
			    !uid_valid(tt->owner = make_kuid(&init_user_ns, id))) {
				*error = "owner must be a numeric user ID";
				return -EINVAL;
			}
			tt->access_set = true;
		} else if (!strncasecmp(opt, "group=", 6)) {
			if (kstrtouint(opt + 6, 10, &id) ||
			    !gid_valid(tt->group = make_kgid(&init_user_ns, id))) {
				*error = "group must be a numeric group ID";
				return -EINVAL;
			}
			if (!mode_set)
				tt->mode = 0660;
			tt->access_set = true;
		} else if (!strncasecmp(opt, "mode=", 5)) {
			if (kstrtouint(opt + 5, 8, &id) || id & ~0777U) {
				*error = "mode must be octal permission bits (e.g. 0660)";
				return -EINVAL;
			}
			tt->mode = id;
			mode_set = true;
			tt->access_set = true;
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

/* With dmu_names_lock held. */
static struct dmu_target *dmu_find_name(const char *name)
{
	struct dmu_target *t;

	list_for_each_entry(t, &dmu_names, name_node)
		if (!strcmp(t->name, name))
			return t;
	return NULL;
}

/* The live table's view of the device, for GET_INFO and the watchdog. */
static void dmu_apply_table(struct dmu_target *t, const struct dmu_table *tt)
{
	spin_lock(&t->lock);
	t->len = tt->len;
	t->ops = tt->ops;
	t->max_payload = tt->max_payload;
	t->request_timeout = tt->request_timeout;
	t->queue_depth = tt->queue_depth;
	t->access_set = tt->access_set;
	t->owner = tt->owner;
	t->group = tt->group;
	t->mode = tt->mode;
	if (!list_empty(&t->queue) || t->request_timeout)
		dmu_arm_watchdog(t);
	spin_unlock(&t->lock);
	/* The new table's queue_depth may be deeper. */
	wake_up_all(&t->depth_wq);
}

/* A new control device for @tt, registered. With dmu_names_lock held. */
static struct dmu_target *dmu_target_create(struct dmu_table *tt,
					    struct dm_target *ti,
					    const char *name)
{
	struct dmu_target *t;
	int r;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&t->lock);
	INIT_LIST_HEAD(&t->queue);
	INIT_LIST_HEAD(&t->channels);
	INIT_LIST_HEAD(&t->tables);
	hash_init(t->held);
	init_waitqueue_head(&t->wq);
	init_waitqueue_head(&t->depth_wq);
	init_waitqueue_head(&t->drain_wq);
	INIT_DELAYED_WORK(&t->watchdog, dmu_watchdog_fn);
	t->orphaned_at = jiffies;
	t->md = dm_table_get_md(ti->table);
	strscpy(t->name, name, sizeof(t->name));
	dmu_apply_table(t, tt);		/* until a resume applies a table */
	r = dmu_control_register(t);	/* frees @t on failure */
	if (r)
		return ERR_PTR(r);
	list_add(&t->name_node, &dmu_names);
	return t;
}

/*
 * Attach @tt to the control device named @name: a new one, or, for a reload
 * of the same mapped device, the one the live table uses, so that the
 * daemon's channels carry on across the swap. With dmu_names_lock held.
 */
static int dmu_attach(struct dmu_table *tt, struct dm_target *ti,
		      const char *name, char **error)
{
	struct dmu_target *t = dmu_find_name(name);
	struct dmu_table *other;

	if (!t) {
		t = dmu_target_create(tt, ti, name);
		if (IS_ERR(t)) {
			*error = "Cannot register the control device";
			return PTR_ERR(t);
		}
	} else {
		/* Another device's, or one on its way out. */
		if (t->md != dm_table_get_md(ti->table) || list_empty(&t->tables)) {
			*error = "Control name already in use";
			return -EBUSY;
		}
		list_for_each_entry(other, &t->tables, node) {
			if (other->ti->table == ti->table) {
				*error = "Control name used twice in one table";
				return -EBUSY;
			}
		}
		get_device(&t->dev);
	}
	tt->t = t;
	list_add_tail(&tt->node, &t->tables);
	return 0;
}

/* <start> <length> <control-name> [<#opt_args> <opt>...] */
static int user_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct dmu_table *tt;
	char dummy;
	int r;

	if (argc < 3) {
		ti->error = "Invalid argument count";
		return -EINVAL;
	}
	tt = kzalloc(sizeof(*tt), GFP_KERNEL);
	if (!tt) {
		ti->error = "Cannot allocate target";
		return -ENOMEM;
	}
	tt->ti = ti;
	tt->ops = DMU_ALL_OPS;
	tt->max_payload = DMU_DEFAULT_PAYLOAD;
	tt->queue_depth = DMU_DEFAULT_QUEUE_DEPTH;
	tt->owner = GLOBAL_ROOT_UID;
	tt->group = GLOBAL_ROOT_GID;
	tt->mode = 0600;

	r = -EINVAL;
	if (sscanf(argv[0], "%llu%c", &tt->start, &dummy) != 1 ||
	    sscanf(argv[1], "%llu%c", &tt->len, &dummy) != 1) {
		ti->error = "Invalid start or length";
		goto bad;
	}
	if (tt->len != ti->len || tt->start + tt->len < tt->start) {
		ti->error = "Length must equal the target's length";
		goto bad;
	}
	if (!dmu_valid_name(argv[2])) {
		ti->error = "Invalid control name (1-64 of A-Z a-z 0-9 - _ . + : @)";
		goto bad;
	}
	dm_consume_args(&as, 3);
	r = dmu_parse_options(tt, &as, &ti->error);
	if (r)
		goto bad;
	mutex_lock(&dmu_names_lock);
	r = dmu_attach(tt, ti, argv[2], &ti->error);
	mutex_unlock(&dmu_names_lock);
	if (r)
		goto bad;

	ti->private = tt;
	ti->per_io_data_size = sizeof(struct dmu_request);
	if (tt->ops & DM_USER_OP_FLUSH) {
		ti->num_flush_bios = 1;
		ti->flush_supported = true;
	}
	if (tt->ops & DM_USER_OP_DISCARD) {
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
	}
	if (tt->ops & DM_USER_OP_SECURE_ERASE)
		ti->num_secure_erase_bios = 1;
	if (tt->ops & DM_USER_OP_WRITE_ZEROES)
		ti->num_write_zeroes_bios = 1;
	return 0;

bad:
	kfree(tt);
	return r;
}

static bool dmu_drained(struct dmu_target *t)
{
	bool drained;

	spin_lock(&t->lock);
	drained = !t->nr_doomed;
	spin_unlock(&t->lock);
	return drained;
}

/* The last table is gone: fail everything, remove the control device. */
static void dmu_target_destroy(struct dmu_target *t)
{
	spin_lock(&t->lock);
	WRITE_ONCE(t->dead, true);
	spin_unlock(&t->lock);
	dmu_end_all(t, true, BLK_STS_IOERR);

	/* Blocked readers return -ENOTBLK; pollers see EPOLLERR | EPOLLHUP. */
	dmu_wake_all(t);
	dmu_control_unregister(t);
	mutex_lock(&dmu_names_lock);
	list_del(&t->name_node);
	mutex_unlock(&dmu_names_lock);
	cancel_delayed_work_sync(&t->watchdog);

	/* Copiers caught mid-copy end their bios; dm frees them after us. */
	wait_event(t->drain_wq, dmu_drained(t));
}

static void user_dtr(struct dm_target *ti)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;
	bool last;

	mutex_lock(&dmu_names_lock);
	list_del(&tt->node);
	last = list_empty(&t->tables);
	mutex_unlock(&dmu_names_lock);
	kfree(tt);
	/* Otherwise the other table of the device keeps the channels. */
	if (last)
		dmu_target_destroy(t);
	put_device(&t->dev);
}

static bool dmu_has_room(struct dmu_target *t)
{
	bool room;

	spin_lock(&t->lock);
	room = t->nr_requests < t->queue_depth;
	spin_unlock(&t->lock);
	return room;
}

static int user_map(struct dm_target *ti, struct bio *bio)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;
	struct dmu_request *req = dm_per_bio_data(bio, sizeof(*req));
	int type = dmu_bio_type(tt->ops, bio);

	if (type < 0) {
		bio->bi_status = BLK_STS_NOTSUPP;
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	/* Mapped after presuspend: dm core resubmits it after resume. */
	if (unlikely(dm_noflush_suspending(ti)))
		return DM_MAPIO_REQUEUE;
	/*
	 * Cut at max_payload from where the bio starts, not at multiples of it
	 * as dm_set_target_max_io_len() would: an unaligned bio of max_payload
	 * stays one request. dm core sends the rest as the next bio.
	 */
	if ((type == DM_USER_REQ_MAP_READ || type == DM_USER_REQ_MAP_WRITE) &&
	    bio_sectors(bio) > tt->max_payload >> SECTOR_SHIFT)
		dm_accept_partial_bio(bio, tt->max_payload >> SECTOR_SHIFT);

	req->bio = bio;
	req->ch = NULL;
	INIT_HLIST_NODE(&req->hnode);
	req->type = type;
	req->flags = dmu_bio_flags(bio);
	req->sector = bio_sectors(bio) ?
		tt->start + dm_target_offset(ti, bio->bi_iter.bi_sector) : 0;
	if (type == DM_USER_REQ_MAP_READ)
		req->class = DMU_CLASS_READ;
	else if (type == DM_USER_REQ_MAP_WRITE && bio_has_data(bio))
		req->class = DMU_CLASS_WRITE;
	else
		req->class = DMU_CLASS_OTHER;
	req->busy = false;
	req->doomed = false;

	spin_lock(&t->lock);
	while (unlikely(t->nr_requests >= t->queue_depth)) {
		spin_unlock(&t->lock);
		/* A full queue: a NOWAIT bio must not wait for room. */
		if (bio->bi_opf & REQ_NOWAIT) {
			bio_wouldblock_error(bio);
			return DM_MAPIO_SUBMITTED;
		}
		/* map may sleep: dm core just allocated the clone with GFP_NOIO. */
		io_wait_event(t->depth_wq, dmu_has_room(t) || dm_noflush_suspending(ti));
		/* A noflush suspend began meanwhile: back to dm core with it too. */
		if (dm_noflush_suspending(ti))
			return DM_MAPIO_REQUEUE;
		spin_lock(&t->lock);
	}
	t->nr_requests++;
	req->queued_at = jiffies;	/* after any wait for room */
	req->seq = t->next_seq++;
	list_add_tail(&req->entry, &t->queue);
	t->nr_queued++;
	dmu_arm_watchdog(t);
	spin_unlock(&t->lock);
	/* The target outlives its map calls: no reference needed. */
	dmu_wake_one(t);
	return DM_MAPIO_SUBMITTED;
}

/*
 * A noflush suspend must not wait for a daemon: what it has not read yet
 * goes back to dm core, which resubmits it after resume (to the new table,
 * after a reload). What it holds it may be working on, so that waits for its
 * answer, or for request_timeout.
 */
static void user_presuspend(struct dm_target *ti)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;

	if (!dm_noflush_suspending(ti))
		return;
	spin_lock(&t->lock);
	t->noflush_suspending = true;
	spin_unlock(&t->lock);
	dmu_end_all(t, false, BLK_STS_DM_REQUEUE);
	/* Bios waiting in map for room in the queue go back too. */
	wake_up_all(&t->depth_wq);
}

/* The suspend finished, or failed: request_timeout fails again. */
static void user_postsuspend(struct dm_target *ti)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;

	spin_lock(&t->lock);
	t->noflush_suspending = false;
	spin_unlock(&t->lock);
}

/*
 * This table is live now: its size and options are what daemons see.
 *
 * dm core has just set the device's limits and flags from the table. With no
 * devices to iterate, it counted us as able to poll (QUEUE_FLAG_POLL); but a
 * REQ_POLLED bio completes only when it is polled, and nothing of ours can be,
 * so a polled read (RWF_HIPRI, io_uring IOPOLL) would sleep until the block
 * layer's half-a-hung-task-timeout poll retry. Submitters still see the
 * device suspended here, so bios that come in later are not polled.
 */
static void user_resume(struct dm_target *ti)
{
	struct dmu_table *tt = ti->private;

	blk_queue_flag_clear(QUEUE_FLAG_POLL,
			     dm_disk(dm_table_get_md(ti->table))->queue);
	dmu_apply_table(tt->t, tt);
}

static unsigned int dmu_emit_counters(struct dmu_target *t, char *result,
				      unsigned int maxlen)
{
	unsigned int sz = 0, queued, inflight[DMU_NR_CLASSES], channels;
	u64 completed, errors, requeued, timed_out;

	spin_lock(&t->lock);
	queued = t->nr_queued;
	memcpy(inflight, t->nr_inflight, sizeof(inflight));
	completed = t->completed;
	errors = t->errors;
	channels = t->nr_channels;
	requeued = t->requeued;
	timed_out = t->timed_out;
	spin_unlock(&t->lock);
	DMEMIT("queued=%u inflight_read=%u inflight_write=%u inflight_other=%u completed=%llu errors=%llu channels=%u requeued=%llu timed_out=%llu",
	       queued, inflight[DMU_CLASS_READ], inflight[DMU_CLASS_WRITE],
	       inflight[DMU_CLASS_OTHER], completed, errors, channels,
	       requeued, timed_out);
	return sz;
}

/*
 * dmsetup message DEV 0 abort               fail everything queued and held (EIO)
 * dmsetup message DEV 0 counters            print the status line's counters
 * dmsetup message DEV 0 request_timeout MS  until the next resume; e.g. to let a
 *                                           suspend stuck on a hung daemon finish
 */
static int user_message(struct dm_target *ti, unsigned int argc, char **argv,
			char *result, unsigned int maxlen)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;
	unsigned int sz = 0, n;

	if (argc == 1 && !strcasecmp(argv[0], "abort")) {
		n = dmu_end_all(t, true, BLK_STS_IOERR);
		DMINFO("%s: aborted %u requests", t->name, n);
		DMEMIT("aborted=%u", n);
		return 1;
	}
	if (argc == 1 && !strcasecmp(argv[0], "counters")) {
		dmu_emit_counters(t, result, maxlen);
		return 1;
	}
	if (argc == 2 && !strcasecmp(argv[0], "request_timeout")) {
		if (kstrtouint(argv[1], 10, &n) || n > DMU_MAX_REQUEST_TIMEOUT) {
			DMWARN("%s: request_timeout must be 0 to %u ms", t->name,
			       DMU_MAX_REQUEST_TIMEOUT);
			return -EINVAL;
		}
		spin_lock(&t->lock);
		t->request_timeout = n;
		spin_unlock(&t->lock);
		/* Check what is waiting now; the watchdog rearms itself. */
		mod_delayed_work(system_wq, &t->watchdog, 0);
		return 0;
	}
	DMWARN("%s: unknown message (abort, counters, request_timeout MS)", t->name);
	return -EINVAL;
}

static void user_status(struct dm_target *ti, status_type_t type,
			unsigned int status_flags, char *result,
			unsigned int maxlen)
{
	struct dmu_table *tt = ti->private;
	struct dmu_target *t = tt->t;
	unsigned int sz = 0, nr_opts;
	u64 off = DMU_ALL_OPS & ~tt->ops;

	switch (type) {
	case STATUSTYPE_INFO:
		dmu_emit_counters(t, result, maxlen);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%llu %llu %s", tt->start, tt->len, t->name);
		nr_opts = hweight64(off) + (tt->max_payload_set ? 2 : 0) +
			  !!tt->request_timeout + tt->queue_depth_set +
			  tt->access_set * 3;
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
		if (tt->max_payload_set)
			DMEMIT(" max_payload %u", tt->max_payload);
		if (tt->request_timeout)
			DMEMIT(" request_timeout=%u", tt->request_timeout);
		if (tt->queue_depth_set)
			DMEMIT(" queue_depth=%u", tt->queue_depth);
		if (tt->access_set)
			DMEMIT(" owner=%u group=%u mode=%04o",
			       from_kuid_munged(&init_user_ns, tt->owner),
			       from_kgid_munged(&init_user_ns, tt->group), tt->mode);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",control=%s,ops=%llu,max_payload=%u;",
		       t->name, tt->ops, tt->max_payload);
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
	struct dmu_table *tt = ti->private;
	unsigned int payload_sectors = tt->max_payload >> SECTOR_SHIFT;

	limits->max_hw_sectors = payload_sectors;
	limits->max_hw_discard_sectors = 0;
	limits->max_write_zeroes_sectors = 0;
	limits->max_secure_erase_sectors = 0;
	if (tt->ops & DM_USER_OP_DISCARD) {
		limits->max_hw_discard_sectors = DMU_MAX_EXTENT_SECTORS;
		limits->discard_granularity = SECTOR_SIZE;
	}
	if (tt->ops & DM_USER_OP_WRITE_ZEROES)
		limits->max_write_zeroes_sectors = DMU_MAX_EXTENT_SECTORS;
	if (tt->ops & DM_USER_OP_SECURE_ERASE)
		limits->max_secure_erase_sectors = DMU_MAX_EXTENT_SECTORS;
	dmu_set_derived_limits(limits);
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
	.presuspend	 = user_presuspend,
	.presuspend_undo = user_postsuspend,
	.postsuspend	 = user_postsuspend,
	.resume		 = user_resume,
	.message	 = user_message,
	.status		 = user_status,
	.iterate_devices = user_iterate_devices,
	.io_hints	 = user_io_hints,
};

static int __init dm_user_init(void)
{
	int r = dmu_control_init();

	if (r) {
		DMERR("cannot allocate control device numbers: %d", r);
		return r;
	}
	r = dm_register_target(&user_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		dmu_control_exit();
	}
	return r;
}

static void __exit dm_user_exit(void)
{
	dm_unregister_target(&user_target);
	dmu_control_exit();
}

module_init(dm_user_init);
module_exit(dm_user_exit);

MODULE_DESCRIPTION(DM_NAME " target handing block I/O to a userspace daemon");
MODULE_LICENSE("GPL");
