// SPDX-License-Identifier: GPL-2.0-only
/*
 * module-probe: drives the dm-user module directly, to test what a
 * well-behaved Part 1 daemon never does (malformed responses, partial
 * messages, many channels, io_uring, hand-over) and to serve devices for the
 * Part 2 tests in tests/vm/module-*.sh.
 *
 *   module-probe serve CTL [--threads N] [--requeue] [--store FILE]
 *                [--stats FILE] [--unsupported OP] [--uring QD] [--delay-us N]
 *                [--hold N [--hold-after M]]
 *       A daemon: an in-memory (or FILE-backed, shared between daemons)
 *       store, N blocking channels or one io_uring channel with QD reads.
 *       Prints "ready" once its channels are open; exits 0 when the target
 *       goes away (-ENOTBLK) or on SIGTERM, writing op counters to FILE.
 *       --hold N: answer the first M requests (default 0), then keep the
 *       next N unanswered for good and print "holding N" once it has them
 *       all; later ones are answered again. A test waits for that line, so
 *       it knows what the daemon holds when it kills it, however slow the
 *       machine. An io_uring channel stops reading once all QD are held.
 *   module-probe hold CTL N
 *       Reads N requests and answers none until SIGUSR1, then answers them
 *       all (reads are served with zeros) and exits.
 *   module-probe many PREFIX N
 *       Serves /dev/dm-user/PREFIX1-ctl .. PREFIXN-ctl (one-block targets)
 *       from one thread while writing a block to each /dev/mapper/PREFIX<i>
 *       and reading it back; prints "served N".
 *   module-probe case NAME DEV CTL
 *       One self-checking scenario (see the table at the end); exit 0 = pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>
#include <linux/fs.h>

#include <linux/dm-user.h>

#define HDR sizeof(struct dm_user_message)
#define BLK 4096

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "module-probe: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static int open_ctl(const char *ctl, int flags)
{
	char path[256];
	int fd;

	if (strchr(ctl, '/'))
		snprintf(path, sizeof(path), "%s", ctl);
	else
		snprintf(path, sizeof(path), "/dev/dm-user/%s", ctl);
	fd = open(path, O_RDWR | O_CLOEXEC | flags);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	return fd;
}

static struct dm_user_info get_info(int fd)
{
	struct dm_user_info info;

	if (ioctl(fd, DM_USER_IOC_GET_INFO, &info))
		die("DM_USER_IOC_GET_INFO: %s", strerror(errno));
	return info;
}

/* ---- the store and request handling shared by the daemons ---- */

static uint8_t *store;
static uint64_t store_size;
static int unsupported_type = -1;
static atomic_ulong n_ops[16], n_preflush, n_fua, n_bad;

static void store_open(const char *file, uint64_t size)
{
	int fd;

	store_size = size;
	if (!file) {
		store = mmap(NULL, size, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	} else {
		fd = open(file, O_RDWR | O_CREAT, 0600);
		if (fd < 0 || ftruncate(fd, (off_t)size))
			die("store %s: %s", file, strerror(errno));
		store = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	}
	if (store == MAP_FAILED)
		die("mmap store: %s", strerror(errno));
}

/*
 * Serve the request in msg (payload after it); build the response in msg.
 * Returns the response's length.
 */
static size_t handle(struct dm_user_message *msg)
{
	uint64_t off = msg->sector * 512, len = msg->len;
	uint64_t type = msg->type;

	if (type < 16)
		n_ops[type]++;
	if (msg->flags & DM_USER_REQ_MAP_FLAG_PREFLUSH)
		n_preflush++;
	if (msg->flags & DM_USER_REQ_MAP_FLAG_FUA)
		n_fua++;
	if ((int)type == unsupported_type) {
		msg->type = DM_USER_RESP_UNSUPPORTED;
		return HDR;
	}
	if (len && (off > store_size || len > store_size - off)) {
		n_bad++;
		msg->type = DM_USER_RESP_ERROR;
		return HDR;
	}
	msg->type = DM_USER_RESP_SUCCESS;
	switch (type) {
	case DM_USER_REQ_MAP_READ:
		memcpy(msg->buf, store + off, len);
		return HDR + len;
	case DM_USER_REQ_MAP_WRITE:
		memcpy(store + off, msg->buf, len);
		return HDR;
	case DM_USER_REQ_MAP_DISCARD:
	case DM_USER_REQ_MAP_WRITE_ZEROES:
	case DM_USER_REQ_MAP_SECURE_ERASE:
		memset(store + off, 0, len);
		return HDR;
	default:
		n_bad++;
		msg->type = DM_USER_RESP_ERROR;
		return HDR;
	}
}

static void write_all(int fd, const void *buf, size_t len)
{
	ssize_t n = write(fd, buf, len);

	if (n != (ssize_t)len)
		die("response write returned %zd (%s), wanted %zu", n,
		    n < 0 ? strerror(errno) : "short", len);
}

static const char *stats_file;
static unsigned int delay_us;	/* before each answer: lets requests pile up */
static unsigned int hold_n, hold_after;	/* --hold N --hold-after M */
static atomic_uint n_seen;

/*
 * --hold: whether to keep this request unanswered. Requests are numbered in
 * the order the daemon's channels read them; numbers hold_after up to
 * hold_after + hold_n - 1 are held. Whoever takes the last of them says so:
 * by then every earlier number has been read, so all N are held.
 */
static bool hold_request(void)
{
	unsigned int seen;

	if (!hold_n)
		return false;
	seen = atomic_fetch_add(&n_seen, 1);
	if (seen < hold_after || seen - hold_after >= hold_n)
		return false;
	if (seen - hold_after == hold_n - 1) {
		printf("holding %u\n", hold_n);
		fflush(stdout);
	}
	return true;
}

static int count_iou_workers(void)
{
	char path[300], comm[64];
	struct dirent *d;
	int n = 0;
	DIR *dir = opendir("/proc/self/task");

	while (dir && (d = readdir(dir))) {
		FILE *f;

		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", d->d_name);
		f = fopen(path, "r");
		if (f && fgets(comm, sizeof(comm), f) && !strncmp(comm, "iou-wrk", 7))
			n++;
		if (f)
			fclose(f);
	}
	if (dir)
		closedir(dir);
	return n;
}

static atomic_int max_iou_workers;

static void write_stats(void)
{
	FILE *f;

	if (!stats_file)
		return;
	f = fopen(stats_file, "w");
	if (!f)
		return;
	fprintf(f, "read=%lu write=%lu discard=%lu write_zeroes=%lu secure_erase=%lu preflush=%lu fua=%lu bad=%lu iou_workers=%d\n",
		n_ops[DM_USER_REQ_MAP_READ], n_ops[DM_USER_REQ_MAP_WRITE],
		n_ops[DM_USER_REQ_MAP_DISCARD], n_ops[DM_USER_REQ_MAP_WRITE_ZEROES],
		n_ops[DM_USER_REQ_MAP_SECURE_ERASE], n_preflush, n_fua, n_bad,
		max_iou_workers);
	fclose(f);
}

static void *signal_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	sigwait(set, &sig);
	write_stats();
	_exit(0);
}

struct worker {
	pthread_t thread;
	int fd;
	size_t bufsize;
	int status;
};

/* A Part 1 style channel, but with whole-message reads. */
static void *blocking_worker(void *arg)
{
	struct worker *w = arg;
	struct dm_user_message *msg = malloc(w->bufsize);

	for (;;) {
		ssize_t n = read(w->fd, msg, w->bufsize);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ENOTBLK)
			break;
		if (n < (ssize_t)HDR)
			die("read returned %zd: %s", n, n < 0 ? strerror(errno) : "short");
		if (msg->type == DM_USER_REQ_MAP_WRITE && (size_t)n != HDR + msg->len)
			die("WRITE request of %llu bytes came as %zd bytes",
			    (unsigned long long)msg->len, n);
		if (hold_request()) {
			/* Kept for good: the next request needs a buffer of its own. */
			msg = malloc(w->bufsize);
			if (!msg)
				die("out of memory");
			continue;
		}
		if (delay_us)
			usleep(delay_us);
		write_all(w->fd, msg, handle(msg));
	}
	free(msg);
	return NULL;
}

/*
 * user_data of uring_serve's operations: the slot in the low 32 bits, and what
 * the operation is above them.
 */
#define URING_WRITE	(1ULL << 32)
#define URING_POLL	(1ULL << 33)

/*
 * Read the next request into slot @i. RWF_NOWAIT: when nothing is queued the
 * read fails with -EAGAIN instead of waiting in io_uring's internal poll, and
 * then (@wait) it waits in an exclusive poll linked to the read, so a new
 * request wakes one slot. A plain read's internal poll is woken by every
 * request, as on a pipe; 6.1's io_uring re-arms a woken read that finds nothing
 * up to 127 times, then hands it to an io-wq thread blocked in read(). With
 * more slots than requests, a slot that keeps losing gets there.
 */
static void uring_read(struct io_uring *ring, int fd, char *buf, size_t len,
		       unsigned int i, bool wait)
{
	struct io_uring_sqe *sqe;

	if (wait) {
		sqe = io_uring_get_sqe(ring);
		io_uring_prep_poll_add(sqe, fd, POLLIN | EPOLLEXCLUSIVE);
		io_uring_sqe_set_data64(sqe, URING_POLL | i);
		sqe->flags |= IOSQE_IO_LINK;
	}
	sqe = io_uring_get_sqe(ring);
	io_uring_prep_read(sqe, fd, buf, len, 0);
	sqe->rw_flags = RWF_NOWAIT;
	io_uring_sqe_set_data64(sqe, i);
	io_uring_submit(ring);
}

/* One channel, qd reads in flight on io_uring, responses written as they are ready. */
static void uring_serve(int fd, unsigned int qd, size_t bufsize)
{
	struct io_uring ring;
	char **bufs = calloc(qd, sizeof(*bufs));
	unsigned int i;
	int r;

	/* Each slot has at most two operations in flight: a poll and its read. */
	r = io_uring_queue_init(qd * 2, &ring, 0);
	if (r)
		die("io_uring_queue_init: %s", strerror(-r));
	for (i = 0; i < qd; i++) {
		bufs[i] = malloc(bufsize);
		uring_read(&ring, fd, bufs[i], bufsize, i, false);
	}
	for (unsigned long completions = 0;;) {
		struct io_uring_cqe *cqe;
		uint64_t data;
		int res, w;

		r = io_uring_wait_cqe(&ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r)
			die("io_uring_wait_cqe: %s", strerror(-r));
		data = io_uring_cqe_get_data64(cqe);
		res = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		if (!(++completions % 1024)) {
			w = count_iou_workers();
			if (w > max_iou_workers)
				max_iou_workers = w;
		}
		i = (unsigned int)data;
		if (data & URING_POLL) {
			/* Its read says what happened; a failed poll cancels it. */
			if (res < 0 && res != -ECANCELED)
				die("io_uring poll: %s", strerror(-res));
			continue;
		}
		if (data & URING_WRITE) {
			/* A response went out: read the next request into that slot. */
			if (res < 0)
				die("io_uring response write: %s", strerror(-res));
			uring_read(&ring, fd, bufs[i], bufsize, i, false);
			continue;
		}
		if (res == -EAGAIN || res == -ECANCELED) {
			uring_read(&ring, fd, bufs[i], bufsize, i, true);
			continue;
		}
		if (res == -ENOTBLK)
			break;
		if (res < (int)HDR)
			die("io_uring read: %d", res);
		if (hold_request())
			continue;	/* slot i stays taken: no read goes into it again */
		if (delay_us)
			usleep(delay_us);
		{
			struct dm_user_message *msg = (void *)bufs[i];
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			size_t len = handle(msg);

			io_uring_prep_write(sqe, fd, msg, len, 0);
			io_uring_sqe_set_data64(sqe, URING_WRITE | i);
			io_uring_submit(&ring);
		}
	}
	io_uring_queue_exit(&ring);
}

static int cmd_serve(int argc, char **argv)
{
	unsigned int threads = 1, qd = 0, i;
	const char *ctl = argv[0], *store_file = NULL;
	bool requeue = false;
	struct worker *w;
	struct dm_user_info info;
	sigset_t set;
	pthread_t sig;
	int fd;

	for (i = 1; i < (unsigned int)argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < (unsigned int)argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--requeue"))
			requeue = true;
		else if (!strcmp(argv[i], "--store") && i + 1 < (unsigned int)argc)
			store_file = argv[++i];
		else if (!strcmp(argv[i], "--stats") && i + 1 < (unsigned int)argc)
			stats_file = argv[++i];
		else if (!strcmp(argv[i], "--unsupported") && i + 1 < (unsigned int)argc)
			unsupported_type = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--delay-us") && i + 1 < (unsigned int)argc)
			delay_us = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--uring") && i + 1 < (unsigned int)argc)
			qd = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--hold") && i + 1 < (unsigned int)argc)
			hold_n = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--hold-after") && i + 1 < (unsigned int)argc)
			hold_after = atoi(argv[++i]);
		else
			die("serve: unknown option %s", argv[i]);
	}
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_create(&sig, NULL, signal_thread, &set);

	fd = open_ctl(ctl, 0);
	info = get_info(fd);
	store_open(store_file, info.device_sectors * 512);
	if (qd) {
		if (requeue) {
			uint64_t f = DM_USER_CHANNEL_REQUEUE_ON_CLOSE;

			if (ioctl(fd, DM_USER_IOC_SET_CHANNEL_FLAGS, &f))
				die("SET_CHANNEL_FLAGS: %s", strerror(errno));
		}
		printf("ready\n");
		fflush(stdout);
		uring_serve(fd, qd, HDR + info.max_payload);
		if (count_iou_workers() > max_iou_workers)
			max_iou_workers = count_iou_workers();
		write_stats();
		return 0;
	}
	w = calloc(threads, sizeof(*w));
	for (i = 0; i < threads; i++) {
		w[i].fd = i ? open_ctl(ctl, 0) : fd;
		w[i].bufsize = HDR + info.max_payload;
		if (requeue) {
			uint64_t f = DM_USER_CHANNEL_REQUEUE_ON_CLOSE;

			if (ioctl(w[i].fd, DM_USER_IOC_SET_CHANNEL_FLAGS, &f))
				die("SET_CHANNEL_FLAGS: %s", strerror(errno));
		}
	}
	printf("ready\n");
	fflush(stdout);
	for (i = 0; i < threads; i++)
		pthread_create(&w[i].thread, NULL, blocking_worker, &w[i]);
	for (i = 0; i < threads; i++)
		pthread_join(w[i].thread, NULL);
	write_stats();
	printf("target gone: exiting\n");
	return 0;
}

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static int cmd_hold(int argc, char **argv)
{
	int fd, n, i;
	struct dm_user_info info;
	struct dm_user_message **msgs;

	if (argc < 2)
		die("hold CTL N");
	n = atoi(argv[1]);
	signal(SIGUSR1, on_usr1);
	fd = open_ctl(argv[0], 0);
	info = get_info(fd);
	msgs = calloc(n, sizeof(*msgs));
	for (i = 0; i < n; i++) {
		msgs[i] = malloc(HDR + info.max_payload);
		if (read(fd, msgs[i], HDR + info.max_payload) < (ssize_t)HDR)
			die("hold: read: %s", strerror(errno));
	}
	printf("holding %d\n", n);
	fflush(stdout);
	while (!got_usr1)
		pause();
	for (i = 0; i < n; i++) {
		size_t len = HDR;

		if (msgs[i]->type == DM_USER_REQ_MAP_READ) {
			memset(msgs[i]->buf, 0, msgs[i]->len);
			len += msgs[i]->len;
		}
		msgs[i]->type = DM_USER_RESP_SUCCESS;
		write_all(fd, msgs[i], len);
	}
	printf("answered %d\n", n);
	return 0;
}

/* ---- self-checking cases ---- */

static const char *dev_path;

static int failures;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "FAIL %s:%d: ", __func__, __LINE__);	\
		fprintf(stderr, __VA_ARGS__);				\
		fprintf(stderr, "\n");					\
		failures++;						\
		return;							\
	}								\
} while (0)

/*
 * One O_DIRECT I/O on the dm device in a child process, so a channel of
 * ours can serve it. Not a thread: a process whose own thread waits on its
 * own device cannot exit (the wait is uninterruptible and its channels stay
 * open until every thread is gone), so a failed check would hang the test.
 */
struct io {
	pid_t pid;
	bool write;
	off_t off;
	size_t len;
	ssize_t res;
	int err;
	uint8_t *buf;		/* shared with the child, page aligned */
};

static struct io *io_start(bool write, off_t off, size_t len, int fill)
{
	struct io *io = mmap(NULL, BLK + len, PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pid;

	if (io == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	io->write = write;
	io->off = off;
	io->len = len;
	io->buf = (uint8_t *)io + BLK;
	memset(io->buf, fill, len);
	/* io is shared with the child: only the parent may store the pid. */
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (!pid) {
		int fd;

		/* Inherited channels would keep our requests held if we hang. */
		closefrom(3);
		fd = open(dev_path, O_RDWR | O_DIRECT);

		if (fd < 0)
			die("open %s: %s", dev_path, strerror(errno));
		io->res = io->write ? pwrite(fd, io->buf, io->len, io->off) :
				      pread(fd, io->buf, io->len, io->off);
		io->err = io->res < 0 ? errno : 0;
		_exit(0);
	}
	io->pid = pid;
	return io;
}

static void io_wait(struct io *io)
{
	waitpid(io->pid, NULL, 0);
}

static void io_free(struct io *io)
{
	munmap(io, BLK + io->len);
}

/* Read one whole request from ch into buf (at least HDR bytes). */
static struct dm_user_message *read_req(int ch, void *buf, size_t size)
{
	ssize_t n = read(ch, buf, size);

	if (n < (ssize_t)HDR)
		die("read request: %zd %s", n, n < 0 ? strerror(errno) : "");
	return buf;
}

static uint8_t big[HDR + (1 << 20) + 4096];

static void case_unknown_seq(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big)), saved = *m;
	ssize_t n;

	m->seq = saved.seq + 1000000;
	m->type = DM_USER_RESP_SUCCESS;
	n = write(ch, m, HDR + BLK);
	CHECK(n < 0 && errno == EINVAL, "unknown seq: write returned %zd errno %d", n, errno);
	m->seq = saved.seq;
	memset(m->buf, 0x5a, BLK);
	n = write(ch, m, HDR + BLK);
	CHECK(n == (ssize_t)(HDR + BLK), "real answer after a bad one: %zd (%s)", n, strerror(errno));
	io_wait(io);
	CHECK(io->res == BLK && io->buf[0] == 0x5a && io->buf[BLK - 1] == 0x5a,
	      "pread got %zd (%s)", io->res, strerror(io->err));
	io_free(io);
	close(ch);
}

static void case_unknown_type(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big));
	ssize_t n;

	m->type = 7;
	n = write(ch, m, HDR);
	CHECK(n < 0 && errno == EINVAL, "unknown type: write returned %zd errno %d", n, errno);
	io_wait(io);
	CHECK(io->res < 0 && io->err == EIO, "pread after unknown type: %zd (%s)", io->res, strerror(io->err));
	m->type = DM_USER_RESP_SUCCESS;
	n = write(ch, m, HDR + BLK);
	CHECK(n < 0 && errno == EINVAL, "answer to a failed request: %zd errno %d", n, errno);
	io_free(io);
	close(ch);
}

static void case_short_header_close(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big));
	ssize_t n;

	m->type = DM_USER_RESP_SUCCESS;
	n = write(ch, m, 20);
	CHECK(n == 20, "20-byte header piece: %zd (%s)", n, strerror(errno));
	close(ch);
	io_wait(io);
	CHECK(io->res < 0 && io->err == EIO, "pread after close: %zd (%s)", io->res, strerror(io->err));
	io_free(io);
}

static void case_too_much_payload(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big));
	ssize_t n;

	m->type = DM_USER_RESP_SUCCESS;
	memset(m->buf, 0x11, BLK);
	memset(m->buf + BLK, 0xff, HDR);	/* garbage "next header" */
	n = write(ch, m, HDR + BLK + HDR);
	CHECK(n == (ssize_t)(HDR + BLK), "response plus garbage: %zd (%s)", n, strerror(errno));
	n = write(ch, m->buf + BLK, HDR);
	CHECK(n < 0 && errno == EINVAL, "the garbage alone: %zd errno %d", n, errno);
	io_wait(io);
	CHECK(io->res == BLK && io->buf[100] == 0x11, "pread: %zd (%s)", io->res, strerror(io->err));
	io_free(io);
	close(ch);
}

static void case_too_little_payload_close(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big));
	ssize_t n;

	m->type = DM_USER_RESP_SUCCESS;
	n = write(ch, m, HDR + BLK / 2);
	CHECK(n == (ssize_t)(HDR + BLK / 2), "half a payload: %zd (%s)", n, strerror(errno));
	close(ch);
	io_wait(io);
	CHECK(io->res < 0 && io->err == EIO, "pread after close mid-payload: %zd (%s)",
	      io->res, strerror(io->err));
	io_free(io);
}

static void case_pieces(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(true, BLK, BLK, 0x77);
	struct dm_user_message hdr, resp;
	uint8_t part[BLK];
	ssize_t n;

	/* A WRITE request read as header, 100 bytes, then the rest. */
	n = read(ch, &hdr, HDR);
	CHECK(n == HDR && hdr.type == DM_USER_REQ_MAP_WRITE && hdr.len == BLK && hdr.sector == 8,
	      "header piece: %zd type %llu len %llu sector %llu", n,
	      (unsigned long long)hdr.type, (unsigned long long)hdr.len,
	      (unsigned long long)hdr.sector);
	n = read(ch, part, 100);
	CHECK(n == 100 && part[0] == 0x77, "100-byte payload piece: %zd", n);
	n = read(ch, part, sizeof(part));
	CHECK(n == BLK - 100 && part[0] == 0x77, "payload rest: %zd, wanted %d", n, BLK - 100);
	resp = hdr;
	resp.type = DM_USER_RESP_SUCCESS;
	n = write(ch, &resp, 7);
	CHECK(n == 7, "7-byte response piece: %zd", n);
	n = write(ch, (uint8_t *)&resp + 7, HDR - 7);
	CHECK(n == HDR - 7, "response rest: %zd (%s)", n, strerror(errno));
	io_wait(io);
	CHECK(io->res == BLK, "pwrite: %zd (%s)", io->res, strerror(io->err));
	io_free(io);

	/* A READ response written as header, then its payload in three pieces. */
	io = io_start(false, 0, BLK, 0);
	n = read(ch, &hdr, sizeof(hdr));
	CHECK(n == HDR && hdr.type == DM_USER_REQ_MAP_READ, "READ header: %zd", n);
	resp = hdr;
	resp.type = DM_USER_RESP_SUCCESS;
	memset(part, 0x33, sizeof(part));
	CHECK(write(ch, &resp, HDR) == HDR, "READ response header");
	CHECK(write(ch, part, 1000) == 1000, "piece 1");
	CHECK(write(ch, part, 96) == 96, "piece 2");
	CHECK(write(ch, part, BLK - 1096) == BLK - 1096, "piece 3");
	io_wait(io);
	CHECK(io->res == BLK && io->buf[4000] == 0x33, "pread: %zd (%s)", io->res, strerror(io->err));
	io_free(io);
	close(ch);
}

static void case_other_channel(const char *ctl)
{
	int ch1 = open_ctl(ctl, 0), ch2 = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch1, big, sizeof(big));
	ssize_t n;

	m->type = DM_USER_RESP_SUCCESS;
	n = write(ch2, m, HDR + BLK);
	CHECK(n < 0 && errno == EINVAL, "answer on the wrong channel: %zd errno %d", n, errno);
	n = write(ch1, m, HDR + BLK);
	CHECK(n == (ssize_t)(HDR + BLK), "answer on the right channel: %zd", n);
	io_wait(io);
	CHECK(io->res == BLK, "pread: %zd", io->res);
	io_free(io);
	close(ch1);
	close(ch2);
}

static int status_field(const char *key)
{
	char cmd[256], line[512], *p;
	FILE *f;
	int v = -1;
	const char *name = strrchr(dev_path, '/') + 1;

	snprintf(cmd, sizeof(cmd), "dmsetup status %s", name);
	f = popen(cmd, "r");
	if (f && fgets(line, sizeof(line), f)) {
		snprintf(cmd, sizeof(cmd), " %s=", key);
		p = strstr(line, cmd);
		if (p)
			v = atoi(p + strlen(cmd));
	}
	if (f)
		pclose(f);
	return v;
}

/* VMT_TIME_SCALE (4 on the debug kernel) stretches every time limit. */
static int time_scale(void)
{
	const char *s = getenv("VMT_TIME_SCALE");
	int v = s ? atoi(s) : 1;

	return v > 0 ? v : 1;
}

static bool wait_status(const char *key, int want)
{
	int i;

	/* Generous: a loaded TCG guest takes seconds to fork and submit. */
	for (i = 0; i < 300 * time_scale(); i++) {
		if (status_field(key) == want)
			return true;
		usleep(100000);
	}
	return false;
}

/* Several requests queued: a huge read buffer still gets one message; two
 * responses go back in one write. */
static void case_whole_message(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *w1, *w2;
	struct dm_user_message *a, *b;
	uint8_t *pair;
	ssize_t n;

	w1 = io_start(true, 0, 2 * BLK, 0x21);
	w2 = io_start(true, 4 * BLK, BLK, 0x22);
	CHECK(wait_status("queued", 2), "two writes never got queued");
	n = read(ch, big, sizeof(big));
	CHECK(n == (ssize_t)(HDR + ((struct dm_user_message *)big)->len),
	      "one read, one whole message: got %zd for len %llu", n,
	      (unsigned long long)((struct dm_user_message *)big)->len);
	pair = malloc(2 * HDR);
	a = (void *)pair;
	*a = *(struct dm_user_message *)big;
	CHECK(a->buf - pair == HDR && big[HDR] == (a->len == 2 * BLK ? 0x21 : 0x22),
	      "payload content");
	n = read(ch, big, sizeof(big));
	CHECK(n == (ssize_t)(HDR + ((struct dm_user_message *)big)->len), "second message: %zd", n);
	b = (void *)(pair + HDR);
	*b = *(struct dm_user_message *)big;
	a->type = b->type = DM_USER_RESP_SUCCESS;
	n = write(ch, pair, 2 * HDR);
	CHECK(n == 2 * HDR, "two responses in one write: %zd (%s)", n, strerror(errno));
	io_wait(w1);
	io_wait(w2);
	CHECK(w1->res == 2 * BLK && w2->res == BLK, "pwrites: %zd %zd", w1->res, w2->res);
	io_free(w1);
	io_free(w2);
	free(pair);
	close(ch);
}

static void case_nonblock_poll(const char *ctl)
{
	int ch = open_ctl(ctl, O_NONBLOCK);
	struct pollfd pfd = { .fd = ch, .events = POLLIN };
	struct io *io;
	ssize_t n;
	int r;

	n = read(ch, big, sizeof(big));
	CHECK(n < 0 && errno == EAGAIN, "O_NONBLOCK read of an empty queue: %zd errno %d", n, errno);
	r = poll(&pfd, 1, 0);
	CHECK(r == 0, "poll of an empty queue: %d revents %#x", r, pfd.revents);
	io = io_start(false, 0, BLK, 0);
	r = poll(&pfd, 1, 10000 * time_scale());
	CHECK(r == 1 && (pfd.revents & POLLIN), "poll after a request: %d revents %#x", r, pfd.revents);
	n = read(ch, big, sizeof(big));
	CHECK(n == HDR, "read after poll: %zd", n);
	((struct dm_user_message *)big)->type = DM_USER_RESP_SUCCESS;
	CHECK(write(ch, big, HDR + BLK) == HDR + BLK, "answer");
	io_wait(io);
	CHECK(io->res == BLK, "pread %zd", io->res);
	io_free(io);
	close(ch);
}

/* io_uring reads at QD32 on a channel with nothing queued: poll-driven, no io-wq. */
static void case_uring_qd32(const char *ctl)
{
	int ch = open_ctl(ctl, 0), i, workers;
	struct io_uring ring;
	struct io_uring_cqe *cqe;
	static uint8_t bufs[32][HDR + BLK];
	struct io *ios[8];

	CHECK(io_uring_queue_init(64, &ring, 0) == 0, "io_uring_queue_init");
	for (i = 0; i < 32; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

		io_uring_prep_read(sqe, ch, bufs[i], sizeof(bufs[i]), 0);
		io_uring_sqe_set_data64(sqe, i);
	}
	CHECK(io_uring_submit(&ring) == 32, "submit 32 reads");
	usleep(300000);
	workers = count_iou_workers();
	CHECK(workers == 0, "%d iou-wrk threads with 32 idle reads", workers);
	for (i = 0; i < 8; i++)
		ios[i] = io_start(false, i * BLK, BLK, 0);
	for (i = 0; i < 8; i++) {
		struct dm_user_message *m;

		CHECK(io_uring_wait_cqe(&ring, &cqe) == 0, "wait cqe");
		CHECK(cqe->res == HDR, "io_uring read result %d", cqe->res);
		m = (void *)bufs[io_uring_cqe_get_data64(cqe)];
		io_uring_cqe_seen(&ring, cqe);
		m->type = DM_USER_RESP_SUCCESS;
		memset(m->buf, 0x44, BLK);
		CHECK(write(ch, m, HDR + BLK) == HDR + BLK, "answer");
	}
	for (i = 0; i < 8; i++) {
		io_wait(ios[i]);
		CHECK(ios[i]->res == BLK && ios[i]->buf[7] == 0x44 && ios[i]->buf[BLK - 1] == 0x44,
		      "pread %d: %zd bytes %#x %#x", i, ios[i]->res, ios[i]->buf[7],
		      ios[i]->buf[BLK - 1]);
		io_free(ios[i]);
	}
	workers = count_iou_workers();
	CHECK(workers == 0, "%d iou-wrk threads after serving", workers);
	io_uring_queue_exit(&ring);
	close(ch);
}

static void case_info(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct dm_user_info info = get_info(ch);
	uint64_t bad = 1ULL << 40;
	const char *want = getenv("PROBE_MAX_PAYLOAD");

	CHECK(info.version_major == 2 && info.version_minor == 0,
	      "version %u.%u.%u", info.version_major, info.version_minor, info.version_patch);
	CHECK((info.features & 0x1f) == 0x1f, "features %#llx", (unsigned long long)info.features);
	CHECK(info.max_payload == (want ? strtoull(want, NULL, 0) : 1 << 20),
	      "max_payload %llu", (unsigned long long)info.max_payload);
	CHECK(info.device_sectors > 0, "device_sectors 0");
	CHECK(ioctl(ch, DM_USER_IOC_SET_CHANNEL_FLAGS, &bad) < 0 && errno == EINVAL,
	      "unknown channel flag accepted");
	CHECK(ioctl(ch, _IO(DM_USER_IOC_MAGIC, 0x99)) < 0 && errno == ENOTTY,
	      "unknown ioctl accepted");
	/* The numbers early 2.0.0 builds borrowed from dm-ioctl's magic. */
	CHECK(ioctl(ch, _IOR(0xfd, 0x80, struct dm_user_info), &info) < 0 &&
	      errno == ENOTTY, "dm-ioctl's magic accepted");
	printf("version %u.%u.%u features %#llx ops %#llx max_payload %llu sectors %llu\n",
	       info.version_major, info.version_minor, info.version_patch,
	       (unsigned long long)info.features, (unsigned long long)info.ops,
	       (unsigned long long)info.max_payload,
	       (unsigned long long)info.device_sectors);
	close(ch);
}

/* The biggest I/O arrives split into requests of at most max_payload. */
static void case_max_payload(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct dm_user_info info = get_info(ch);
	size_t total = 4 * info.max_payload, seen = 0;
	struct io *io = io_start(true, 0, total, 0x66);

	while (seen < total) {
		struct dm_user_message *m = read_req(ch, big, sizeof(big));

		CHECK(m->type == DM_USER_REQ_MAP_WRITE && m->len <= info.max_payload,
		      "request of %llu bytes, max %llu", (unsigned long long)m->len,
		      (unsigned long long)info.max_payload);
		seen += m->len;
		m->type = DM_USER_RESP_SUCCESS;
		CHECK(write(ch, m, HDR) == HDR, "answer");
	}
	io_wait(io);
	CHECK(io->res == (ssize_t)total, "pwrite %zd", io->res);
	io_free(io);
	close(ch);
}

/* A read into an unmapped buffer: EFAULT, and only that request fails. */
static void case_fault(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	ssize_t n;

	CHECK(wait_status("queued", 1), "request never queued");
	void *bad = mmap(NULL, BLK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	n = read(ch, bad, BLK);
	CHECK(n < 0 && errno == EFAULT, "read into a bad buffer: %zd errno %d", n, errno);
	io_wait(io);
	CHECK(io->res < 0 && io->err == EIO, "pread: %zd", io->res);
	io_free(io);
	close(ch);
}

/* Many channels at once, each serving a request. */
static void case_channels(const char *ctl)
{
	enum { N = 256 };
	static struct pollfd pfd[N];
	struct io *ios[N];
	int i, served = 0;

	for (i = 0; i < N; i++) {
		pfd[i].fd = open_ctl(ctl, O_NONBLOCK);
		pfd[i].events = POLLIN;
	}
	CHECK(wait_status("channels", N), "status does not show %d channels", N);
	for (i = 0; i < N; i++)
		ios[i] = io_start(false, (off_t)(i % 64) * BLK, BLK, 0);
	while (served < N) {
		int r = poll(pfd, N, 10000 * time_scale());

		CHECK(r > 0, "poll: %d after %d served", r, served);
		for (i = 0; i < N; i++) {
			ssize_t n;

			if (!(pfd[i].revents & POLLIN))
				continue;
			n = read(pfd[i].fd, big, sizeof(big));
			if (n < 0 && errno == EAGAIN)
				continue;
			CHECK(n == HDR, "read on channel %d: %zd", i, n);
			((struct dm_user_message *)big)->type = DM_USER_RESP_SUCCESS;
			memset(big + HDR, 0x55, BLK);
			CHECK(write(pfd[i].fd, big, HDR + BLK) == HDR + BLK, "answer");
			served++;
		}
	}
	for (i = 0; i < N; i++) {
		io_wait(ios[i]);
		CHECK(ios[i]->res == BLK && ios[i]->buf[1] == 0x55, "pread %d: %zd", i, ios[i]->res);
		io_free(ios[i]);
	}
	for (i = 0; i < N; i++)
		close(pfd[i].fd);
	CHECK(wait_status("channels", 0), "channels not back to 0");
}

/* Status counters follow a request through queued, in flight, completed. */
static void case_status(const char *ctl)
{
	int ch, errors0 = status_field("errors"), completed0 = status_field("completed");
	struct io *r, *w;

	CHECK(status_field("channels") == 0 && status_field("queued") == 0,
	      "not idle at start");
	ch = open_ctl(ctl, 0);
	CHECK(wait_status("channels", 1), "channels != 1");
	r = io_start(false, 0, BLK, 0);
	w = io_start(true, BLK, BLK, 1);
	CHECK(wait_status("queued", 2), "queued != 2");
	read_req(ch, big, sizeof(big));
	{
		struct dm_user_message first = *(struct dm_user_message *)big;
		struct dm_user_message second;
		const char *key1 = first.type == DM_USER_REQ_MAP_READ ?
				   "inflight_read" : "inflight_write";

		CHECK(status_field("queued") == 1 && status_field(key1) == 1,
		      "after one read: queued %d %s %d", status_field("queued"), key1,
		      status_field(key1));
		read_req(ch, big, sizeof(big));
		second = *(struct dm_user_message *)big;
		CHECK(status_field("queued") == 0 && status_field("inflight_read") == 1 &&
		      status_field("inflight_write") == 1, "both in flight");
		/* The first succeeds, the second fails. */
		size_t len = HDR + (first.type == DM_USER_REQ_MAP_READ ? BLK : 0);

		first.type = DM_USER_RESP_SUCCESS;
		second.type = DM_USER_RESP_ERROR;
		memcpy(big, &first, HDR);
		memset(big + HDR, 0, BLK);
		CHECK(write(ch, big, len) == (ssize_t)len, "answer first");
		CHECK(write(ch, &second, HDR) == HDR, "answer second");
	}
	io_wait(r);
	io_wait(w);
	CHECK(status_field("completed") == completed0 + 1 && status_field("errors") == errors0 + 1,
	      "completed %d errors %d (were %d %d)", status_field("completed"),
	      status_field("errors"), completed0, errors0);
	CHECK(status_field("inflight_read") == 0 && status_field("inflight_write") == 0,
	      "in flight not back to 0");
	io_free(r);
	io_free(w);
	close(ch);
	CHECK(wait_status("channels", 0), "channels not back to 0");
}

/* An UNSUPPORTED answer reaches the caller as EOPNOTSUPP. */
static void case_unsupported(const char *ctl)
{
	int ch = open_ctl(ctl, 0);
	struct io *io = io_start(false, 0, BLK, 0);
	struct dm_user_message *m = read_req(ch, big, sizeof(big));

	m->type = DM_USER_RESP_UNSUPPORTED;
	CHECK(write(ch, m, HDR) == HDR, "UNSUPPORTED answer");
	io_wait(io);
	CHECK(io->res < 0 && io->err == EOPNOTSUPP, "pread: %zd (%s)", io->res, strerror(io->err));
	io_free(io);
	close(ch);
}

static const struct {
	const char *name;
	void (*fn)(const char *ctl);
} cases[] = {
	{ "unknown-seq", case_unknown_seq },
	{ "unknown-type", case_unknown_type },
	{ "short-header-close", case_short_header_close },
	{ "too-much-payload", case_too_much_payload },
	{ "too-little-payload-close", case_too_little_payload_close },
	{ "pieces", case_pieces },
	{ "other-channel", case_other_channel },
	{ "whole-message", case_whole_message },
	{ "nonblock-poll", case_nonblock_poll },
	{ "uring-qd32", case_uring_qd32 },
	{ "info", case_info },
	{ "max-payload", case_max_payload },
	{ "fault", case_fault },
	{ "channels", case_channels },
	{ "status", case_status },
	{ "unsupported", case_unsupported },
};

/* ---- many: one thread serves N one-block targets ---- */

struct many {
	unsigned int n;
	struct pollfd *pfd;		/* N control files, then the stop pipe */
	uint8_t (*blocks)[BLK];		/* each target's one block */
};

static void *many_serve(void *arg)
{
	struct many *m = arg;
	uint8_t buf[HDR + BLK];
	struct dm_user_message *msg = (void *)buf;
	unsigned int i;

	for (;;) {
		if (poll(m->pfd, m->n + 1, -1) < 0 && errno != EINTR)
			die("many: poll: %s", strerror(errno));
		if (m->pfd[m->n].revents)
			return NULL;
		for (i = 0; i < m->n; i++) {
			ssize_t r;
			size_t len = HDR;

			if (!(m->pfd[i].revents & POLLIN))
				continue;
			r = read(m->pfd[i].fd, buf, sizeof(buf));
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r < (ssize_t)HDR || msg->sector * 512 + msg->len > BLK)
				die("many: target %u: read %zd (%s), sector %llu len %llu", i + 1, r,
				    r < 0 ? strerror(errno) : "ok", (unsigned long long)msg->sector,
				    (unsigned long long)msg->len);
			if (msg->type == DM_USER_REQ_MAP_READ) {
				memcpy(msg->buf, m->blocks[i] + msg->sector * 512, msg->len);
				len += msg->len;
			} else if (msg->type == DM_USER_REQ_MAP_WRITE) {
				memcpy(m->blocks[i] + msg->sector * 512, msg->buf, msg->len);
			}
			msg->type = DM_USER_RESP_SUCCESS;
			write_all(m->pfd[i].fd, buf, len);
		}
	}
}

/*
 * Open /dev/dm-user/PREFIX<i>-ctl for i = 1..N and serve them all from one
 * thread, while this one writes a block naming each device to
 * /dev/mapper/PREFIX<i> and reads it back.
 */
static int cmd_many(int argc, char **argv)
{
	struct many m = { 0 };
	char path[128], *io;
	int stop[2];
	pthread_t thread;
	unsigned int i;

	if (argc != 2)
		die("many PREFIX N");
	m.n = atoi(argv[1]);
	m.pfd = calloc(m.n + 1, sizeof(*m.pfd));
	m.blocks = calloc(m.n, BLK);
	if (!m.pfd || !m.blocks || pipe(stop) || posix_memalign((void **)&io, BLK, 2 * BLK))
		die("many: out of memory");
	for (i = 0; i < m.n; i++) {
		snprintf(path, sizeof(path), "%s%u-ctl", argv[0], i + 1);
		m.pfd[i].fd = open_ctl(path, O_NONBLOCK);
		m.pfd[i].events = POLLIN;
	}
	m.pfd[m.n].fd = stop[0];
	m.pfd[m.n].events = POLLIN;
	if (pthread_create(&thread, NULL, many_serve, &m))
		die("many: pthread_create");
	for (i = 0; i < m.n; i++) {
		int fd;

		snprintf(path, sizeof(path), "/dev/mapper/%s%u", argv[0], i + 1);
		fd = open(path, O_RDWR | O_DIRECT);
		if (fd < 0)
			die("many: open %s: %s", path, strerror(errno));
		memset(io, 0, 2 * BLK);
		snprintf(io, BLK, "the block of %s", path);
		if (pwrite(fd, io, BLK, 0) != BLK || pread(fd, io + BLK, BLK, 0) != BLK)
			die("many: I/O on %s: %s", path, strerror(errno));
		if (memcmp(io, io + BLK, BLK))
			die("many: %s read back '%.40s'", path, io + BLK);
		close(fd);
	}
	if (write(stop[1], "x", 1) != 1 || pthread_join(thread, NULL))
		die("many: cannot stop the server thread");
	for (i = 0; i < m.n; i++)
		close(m.pfd[i].fd);
	printf("served %u\n", m.n);
	return 0;
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc >= 3 && !strcmp(argv[1], "serve"))
		return cmd_serve(argc - 2, argv + 2);
	if (argc >= 4 && !strcmp(argv[1], "hold"))
		return cmd_hold(argc - 2, argv + 2);
	if (argc >= 4 && !strcmp(argv[1], "many"))
		return cmd_many(argc - 2, argv + 2);
	if (argc == 5 && !strcmp(argv[1], "case")) {
		dev_path = argv[3];
		for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			if (strcmp(cases[i].name, argv[2]))
				continue;
			cases[i].fn(argv[4]);
			printf("%s: %s\n", argv[2], failures ? "FAIL" : "ok");
			return failures ? 1 : 0;
		}
		die("unknown case %s", argv[2]);
	}
	fprintf(stderr, "usage: module-probe serve CTL [opts] | hold CTL N | many PREFIX N | case NAME DEV CTL\n");
	return 2;
}
