// SPDX-License-Identifier: GPL-2.0-only
/*
 * module-waiters: one daemon whose channels each wait for requests in a
 * different way, so that every kind of wait-queue entry the kernel has sits
 * on the control device at once:
 *
 *   aio       aio IOCB_CMD_POLL (its wake function frees its entry)
 *   oneshot   epoll with EPOLLONESHOT, re-armed after each request
 *   excl      epoll with EPOLLEXCLUSIVE, level-triggered
 *   edge      epoll with EPOLLET
 *   uring     io_uring IORING_OP_POLL_ADD, one-shot, re-armed
 *   select    select(2)
 *   block     a blocking read(2)
 *
 *   module-waiters serve CTL [KIND...]
 *       Serves an in-memory store through one channel per KIND (default: all
 *       of them). Prints "ready" when every channel is open; on SIGTERM or
 *       when the target goes away (ENOTBLK) prints "served KIND=N ..." and
 *       exits 0.
 *   module-waiters claim CTL
 *       Opens a channel, claims the target (DM_USER_IOC_CLAIM), prints
 *       "claimed" and waits for SIGTERM. Exit 3 with "EBUSY" on stdout when
 *       the open or the claim is refused with EBUSY.
 *   module-waiters open CTL
 *       Opens a channel read-write; prints "opened" (exit 0) or the errno
 *       name (exit 3).
 *   module-waiters nowait-read DEV
 *       One 4 KiB O_DIRECT preadv2(RWF_NOWAIT) of DEV: prints "read" (exit
 *       0) or the errno name (exit 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/aio_abi.h>
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
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/dm-user.h>

#define HDR sizeof(struct dm_user_message)

static void __attribute__((format(printf, 1, 2), noreturn))
die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "module-waiters: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static const char *ctl_path(const char *ctl)
{
	static char path[256];

	if (strchr(ctl, '/'))
		snprintf(path, sizeof(path), "%s", ctl);
	else
		snprintf(path, sizeof(path), "/dev/dm-user/%s", ctl);
	return path;
}

static uint8_t *store;
static uint64_t store_size;
static size_t bufsize;

enum kind { K_AIO, K_ONESHOT, K_EXCL, K_EDGE, K_URING, K_SELECT, K_BLOCK, K_NR };
static const char *const kind_name[K_NR] = {
	"aio", "oneshot", "excl", "edge", "uring", "select", "block",
};
static atomic_ulong served[K_NR];

struct chan {
	pthread_t thread;
	enum kind kind;
	int fd;
	struct dm_user_message *msg;
};

static void report(void)
{
	int k;

	printf("served");
	for (k = 0; k < K_NR; k++)
		printf(" %s=%lu", kind_name[k], served[k]);
	printf("\n");
	fflush(stdout);
}

/* Answer the request in c->msg. */
static void answer(struct chan *c, ssize_t n)
{
	struct dm_user_message *m = c->msg;
	uint64_t off = m->sector * 512, len = m->len;
	size_t out = HDR;

	if (n < (ssize_t)HDR)
		die("%s: read returned %zd", kind_name[c->kind], n);
	if (m->type == DM_USER_REQ_MAP_WRITE && (size_t)n != HDR + len)
		die("%s: WRITE of %llu bytes came as %zd", kind_name[c->kind],
		    (unsigned long long)len, n);
	if (len && (off > store_size || len > store_size - off)) {
		m->type = DM_USER_RESP_ERROR;
	} else {
		switch (m->type) {
		case DM_USER_REQ_MAP_READ:
			memcpy(m->buf, store + off, len);
			out += len;
			break;
		case DM_USER_REQ_MAP_WRITE:
			memcpy(store + off, m->buf, len);
			break;
		case DM_USER_REQ_MAP_DISCARD:
		case DM_USER_REQ_MAP_WRITE_ZEROES:
		case DM_USER_REQ_MAP_SECURE_ERASE:
			memset(store + off, 0, len);
			break;
		}
		m->type = DM_USER_RESP_SUCCESS;
	}
	if (write(c->fd, m, out) != (ssize_t)out)
		die("%s: response write: %s", kind_name[c->kind], strerror(errno));
	served[c->kind]++;
}

/*
 * After a readiness event: read (non-blocking) until EAGAIN, answering each
 * request. Returns false when the target is gone.
 */
static bool drain(struct chan *c, bool once)
{
	for (;;) {
		ssize_t n = read(c->fd, c->msg, bufsize);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return true;
		if (n < 0 && errno == ENOTBLK)
			return false;
		if (n < 0)
			die("%s: read: %s", kind_name[c->kind], strerror(errno));
		answer(c, n);
		if (once)
			return true;
	}
}

static long sys_io_setup(unsigned int nr, aio_context_t *ctx)
{
	return syscall(__NR_io_setup, nr, ctx);
}

static long sys_io_submit(aio_context_t ctx, long nr, struct iocb **iocbs)
{
	return syscall(__NR_io_submit, ctx, nr, iocbs);
}

static long sys_io_getevents(aio_context_t ctx, long min, long max,
			     struct io_event *ev)
{
	return syscall(__NR_io_getevents, ctx, min, max, ev, NULL);
}

static void serve_aio(struct chan *c)
{
	aio_context_t ctx = 0;
	struct iocb cb, *cbs[1] = { &cb };
	struct io_event ev;

	if (sys_io_setup(4, &ctx))
		die("io_setup: %s", strerror(errno));
	for (;;) {
		memset(&cb, 0, sizeof(cb));
		cb.aio_fildes = c->fd;
		cb.aio_lio_opcode = IOCB_CMD_POLL;
		cb.aio_buf = POLLIN;
		if (sys_io_submit(ctx, 1, cbs) != 1)
			die("io_submit POLL: %s", strerror(errno));
		while (sys_io_getevents(ctx, 1, 1, &ev) != 1)
			if (errno != EINTR)
				die("io_getevents: %s", strerror(errno));
		if (ev.res & (POLLERR | POLLHUP) && !(ev.res & POLLIN))
			return;
		if (!drain(c, false))
			return;
	}
}

static void serve_epoll(struct chan *c, uint32_t how)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN | how };

	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev))
		die("epoll: %s", strerror(errno));
	for (;;) {
		struct epoll_event got;
		int r = epoll_wait(ep, &got, 1, -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1)
			die("epoll_wait: %s", strerror(errno));
		/* One request per one-shot event: the item stays disarmed meanwhile. */
		if (!drain(c, how & EPOLLONESHOT))
			return;
		if (how & EPOLLONESHOT) {
			ev.events = EPOLLIN | how;
			if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev))
				die("epoll_ctl MOD: %s", strerror(errno));
		}
	}
}

static void serve_uring(struct chan *c)
{
	struct io_uring ring;
	int r = io_uring_queue_init(4, &ring, 0);

	if (r)
		die("io_uring_queue_init: %s", strerror(-r));
	for (;;) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		struct io_uring_cqe *cqe;

		io_uring_prep_poll_add(sqe, c->fd, POLLIN);
		io_uring_submit(&ring);
		while ((r = io_uring_wait_cqe(&ring, &cqe)) == -EINTR)
			;
		if (r)
			die("io_uring_wait_cqe: %s", strerror(-r));
		r = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		if (r < 0)
			die("io_uring poll: %s", strerror(-r));
		if (!drain(c, false))
			return;
	}
}

static void serve_select(struct chan *c)
{
	for (;;) {
		fd_set rd;

		FD_ZERO(&rd);
		FD_SET(c->fd, &rd);
		if (select(c->fd + 1, &rd, NULL, NULL, NULL) < 0) {
			if (errno == EINTR)
				continue;
			die("select: %s", strerror(errno));
		}
		if (!drain(c, false))
			return;
	}
}

static void serve_block(struct chan *c)
{
	for (;;) {
		ssize_t n = read(c->fd, c->msg, bufsize);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ENOTBLK)
			return;
		answer(c, n);
	}
}

static atomic_int live;

static void *chan_thread(void *arg)
{
	struct chan *c = arg;

	switch (c->kind) {
	case K_AIO:	serve_aio(c); break;
	case K_ONESHOT:	serve_epoll(c, EPOLLONESHOT); break;
	case K_EXCL:	serve_epoll(c, EPOLLEXCLUSIVE); break;
	case K_EDGE:	serve_epoll(c, EPOLLET); break;
	case K_URING:	serve_uring(c); break;
	case K_SELECT:	serve_select(c); break;
	default:	serve_block(c); break;
	}
	if (--live == 0) {
		report();
		printf("target gone: exiting\n");
		fflush(stdout);
		exit(0);
	}
	return NULL;
}

static void *signal_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	sigwait(set, &sig);
	report();
	_exit(0);
}

static int cmd_serve(int argc, char **argv)
{
	struct chan chans[K_NR * 4];
	struct dm_user_info info;
	unsigned int n = 0, i;
	sigset_t set;
	pthread_t sig;
	int k;

	if (argc == 1) {
		for (k = 0; k < K_NR; k++)
			chans[n++].kind = k;
	}
	for (i = 1; i < (unsigned int)argc && n < K_NR * 4; i++) {
		for (k = 0; k < K_NR; k++)
			if (!strcmp(argv[i], kind_name[k]))
				break;
		if (k == K_NR)
			die("unknown kind %s", argv[i]);
		chans[n++].kind = k;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_create(&sig, NULL, signal_thread, &set);

	for (i = 0; i < n; i++) {
		int flags = O_RDWR | O_CLOEXEC;

		if (chans[i].kind != K_BLOCK)
			flags |= O_NONBLOCK;
		chans[i].fd = open(ctl_path(argv[0]), flags);
		if (chans[i].fd < 0)
			die("open %s: %s", ctl_path(argv[0]), strerror(errno));
	}
	if (ioctl(chans[0].fd, DM_USER_IOC_GET_INFO, &info))
		die("DM_USER_IOC_GET_INFO: %s", strerror(errno));
	store_size = info.device_sectors * 512;
	store = mmap(NULL, store_size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (store == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	bufsize = HDR + info.max_payload;
	live = n;
	for (i = 0; i < n; i++) {
		chans[i].msg = malloc(bufsize);
		pthread_create(&chans[i].thread, NULL, chan_thread, &chans[i]);
	}
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}

static int open_or_report(const char *ctl)
{
	int fd = open(ctl_path(ctl), O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		printf("%s\n", strerrorname_np(errno));
		exit(3);
	}
	return fd;
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

/* One 4 KiB O_DIRECT read of DEV with RWF_NOWAIT (a REQ_NOWAIT bio). */
static int cmd_nowait_read(const char *dev)
{
	int fd = open(dev, O_RDONLY | O_DIRECT | O_CLOEXEC);
	struct iovec iov = { .iov_len = 4096 };

	if (fd < 0)
		die("open %s: %s", dev, strerror(errno));
	iov.iov_base = aligned_alloc(4096, 4096);
	if (preadv2(fd, &iov, 1, 0, RWF_NOWAIT) == 4096) {
		printf("read\n");
		return 0;
	}
	printf("%s\n", strerrorname_np(errno));
	return 3;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "serve"))
		return cmd_serve(argc - 2, argv + 2);
	if (argc == 3 && !strcmp(argv[1], "open")) {
		open_or_report(argv[2]);
		printf("opened\n");
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "nowait-read"))
		return cmd_nowait_read(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "claim")) {
		int fd = open_or_report(argv[2]);

		if (ioctl(fd, DM_USER_IOC_CLAIM)) {
			printf("%s\n", strerrorname_np(errno));
			return 3;
		}
		signal(SIGTERM, on_term);
		printf("claimed\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	fprintf(stderr, "usage: module-waiters serve CTL [KIND...] | claim CTL | open CTL | nowait-read DEV\n");
	return 2;
}
