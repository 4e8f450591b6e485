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

/*
 * The no-daemon watchdog runs while requests are queued and no channel is
 * open: it fails what waited longer than the daemon timeout. Nothing else
 * depends on it: a queued request reaches a waiting reader by its wake-up.
 * With t->lock held.
 */
void dmu_arm_watchdog(struct dmu_target *t)
{
	unsigned long delay = msecs_to_jiffies(READ_ONCE(dm_user_daemon_timeout_msec));

	if (!t->dead && !t->nr_channels && !delayed_work_pending(&t->watchdog))
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
	bool rearm = false;

	spin_lock(&t->lock);
	/* A daemon attached meanwhile: it takes over what is queued. */
	if (t->dead || t->nr_channels)
		goto out;
	list_for_each_entry_safe(req, tmp, &t->queue, entry) {
		unsigned long since = time_after(t->orphaned_at, req->queued_at) ?
				      t->orphaned_at : req->queued_at;

		if (time_after_eq(now, since + tmo)) {
			DMERR_LIMIT("%s: no daemon for %u ms: failing request seq %llu, sector %llu, %u bytes",
				    t->name, jiffies_to_msecs(tmo), req->seq,
				    req->sector, req->bio->bi_iter.bi_size);
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
	spin_unlock(&t->lock);
	dmu_batch_end(t, &b);
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

static int dmu_parse_options(struct dmu_target *t, struct dm_arg_set *as,
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
		} else if (!strncasecmp(opt, "queue_depth=", 12)) {
			if (kstrtouint(opt + 12, 10, &t->queue_depth) ||
			    !t->queue_depth || t->queue_depth > DMU_MAX_QUEUE_DEPTH) {
				*error = "queue_depth must be 1-65536";
				return -EINVAL;
			}
			t->queue_depth_set = true;
		} else if (!strncasecmp(opt, "owner=", 6)) {
			if (kstrtouint(opt + 6, 10, &id) ||
			    !uid_valid(t->owner = make_kuid(&init_user_ns, id))) {
				*error = "owner must be a numeric user ID";
				return -EINVAL;
			}
			t->access_set = true;
		} else if (!strncasecmp(opt, "group=", 6)) {
			if (kstrtouint(opt + 6, 10, &id) ||
			    !gid_valid(t->group = make_kgid(&init_user_ns, id))) {
				*error = "group must be a numeric group ID";
				return -EINVAL;
			}
			if (!mode_set)
				t->mode = 0660;
			t->access_set = true;
		} else if (!strncasecmp(opt, "mode=", 5)) {
			if (kstrtouint(opt + 5, 8, &id) || id & ~0777U) {
				*error = "mode must be octal permission bits (e.g. 0660)";
				return -EINVAL;
			}
			t->mode = id;
			mode_set = true;
			t->access_set = true;
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
	init_waitqueue_head(&t->wq);
	init_waitqueue_head(&t->depth_wq);
	init_waitqueue_head(&t->drain_wq);
	INIT_DELAYED_WORK(&t->watchdog, dmu_watchdog_fn);
	kref_init(&t->ref);
	t->orphaned_at = jiffies;
	t->ops = DMU_ALL_OPS;
	t->max_payload = DMU_DEFAULT_PAYLOAD;
	t->queue_depth = DMU_DEFAULT_QUEUE_DEPTH;
	t->owner = GLOBAL_ROOT_UID;
	t->group = GLOBAL_ROOT_GID;
	t->mode = 0600;

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
	/* dmu_open() checks owner=, group= and mode= itself. */
	t->misc.mode = t->access_set ? 0666 : 0600;

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

static bool dmu_drained(struct dmu_target *t)
{
	bool drained;

	spin_lock(&t->lock);
	drained = !t->nr_doomed;
	spin_unlock(&t->lock);
	return drained;
}

static void user_dtr(struct dm_target *ti)
{
	struct dmu_target *t = ti->private;
	struct dmu_batch b = { BIO_EMPTY_LIST, 0 };
	struct dmu_request *req, *tmp;
	struct dmu_channel *ch;

	spin_lock(&t->lock);
	WRITE_ONCE(t->dead, true);
	list_for_each_entry_safe(req, tmp, &t->queue, entry)
		dmu_finish(t, req, BLK_STS_IOERR, &b);
	list_for_each_entry(ch, &t->channels, node)
		list_for_each_entry_safe(req, tmp, &ch->held, entry)
			dmu_finish(t, req, BLK_STS_IOERR, &b);
	spin_unlock(&t->lock);
	dmu_batch_end(t, &b);

	/* Blocked readers return -ENOTBLK; pollers see EPOLLERR | EPOLLHUP. */
	dmu_wake_all(t);
	misc_deregister(&t->misc);
	mutex_lock(&dmu_names_lock);
	list_del(&t->name_node);
	mutex_unlock(&dmu_names_lock);
	cancel_delayed_work_sync(&t->watchdog);

	/* Copiers caught mid-copy end their bios; dm frees them after us. */
	wait_event(t->drain_wq, dmu_drained(t));

	kref_put(&t->ref, dmu_target_release);
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
	struct dmu_target *t = ti->private;
	struct dmu_request *req = dm_per_bio_data(bio, sizeof(*req));
	int type = dmu_bio_type(t, bio);

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

	spin_lock(&t->lock);
	while (unlikely(t->nr_requests >= t->queue_depth)) {
		spin_unlock(&t->lock);
		/* A full queue: a NOWAIT bio must not wait for room. */
		if (bio->bi_opf & REQ_NOWAIT) {
			bio_wouldblock_error(bio);
			return DM_MAPIO_SUBMITTED;
		}
		/* map may sleep: dm core just allocated the clone with GFP_NOIO. */
		io_wait_event(t->depth_wq, dmu_has_room(t));
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
		spin_lock(&t->lock);
		queued = t->nr_queued;
		memcpy(inflight, t->nr_inflight, sizeof(inflight));
		completed = t->completed;
		errors = t->errors;
		channels = t->nr_channels;
		spin_unlock(&t->lock);
		DMEMIT("queued=%u inflight_read=%u inflight_write=%u inflight_other=%u completed=%llu errors=%llu channels=%u",
		       queued, inflight[DMU_CLASS_READ], inflight[DMU_CLASS_WRITE],
		       inflight[DMU_CLASS_OTHER], completed, errors, channels);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%llu %llu %s", t->start, t->len, t->name);
		nr_opts = hweight64(off) + (t->max_payload_set ? 2 : 0) +
			  t->queue_depth_set + t->access_set * 3;
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
		if (t->queue_depth_set)
			DMEMIT(" queue_depth=%u", t->queue_depth);
		if (t->access_set)
			DMEMIT(" owner=%u group=%u mode=%04o",
			       from_kuid_munged(&init_user_ns, t->owner),
			       from_kgid_munged(&init_user_ns, t->group), t->mode);
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
	dmu_compat_soft_limits(limits, payload_sectors);
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
