// SPDX-License-Identifier: GPL-2.0-only
/*
 * protocol-fuzz: a hostile daemon for the dm-user module, for ./dev soak.
 *
 *   protocol-fuzz CTL SEED MESSAGES [CHANNELS]
 *
 * Opens CHANNELS (default 8) channels on /dev/dm-user/CTL, whose device
 * something else keeps busy (fio), and until it has sent MESSAGES response
 * messages takes random steps, chosen by a generator seeded with SEED:
 *
 *   - reads of random sizes (the rest of a message comes with the next);
 *   - responses to requests read: right, or with a wrong seq, a wrong type,
 *     too little payload, in pieces, twice, on another channel, or random
 *     bytes; and messages for no request (random or nearby seqs);
 *   - waits by poll(), by epoll (level, edge, EPOLLONESHOT, EPOLLEXCLUSIVE),
 *     by aio IOCB_CMD_POLL (left armed, cancelled, or reaped) and by
 *     io_uring poll (both cancelled before their channel closes: an armed
 *     poll keeps the file open, and the requests it holds with it);
 *   - ioctls with random numbers of the module's magic and random arguments
 *     (none, bad pointers, random bytes), and hand-over flags;
 *   - closing a channel and opening it again.
 *
 * One more thread reads with blocking reads on a channel of its own and
 * answers correctly, one request each time a step tells it to, so blocked
 * readers are in the mix without taking every request. The steps of the main
 * thread depend on SEED only (what the kernel has queued varies): a failing
 * seed is the place to start. Stops after MESSAGES messages or 50 x MESSAGES
 * steps, prints "messages=N steps=N requests=N errors=N" and exits 0; what
 * it checks is that the kernel survives (the soak's log check).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/aio_abi.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/dm-user.h>

#define HDR sizeof(struct dm_user_message)
#define MAX_CHANNELS 64
#define MAX_HELD 64
#define BUF (HDR + (1U << 20))

struct held {
	uint64_t seq;
	uint32_t type;
	uint64_t len;
};

struct channel {
	int fd;
	uint8_t *msg;			/* the message being read */
	size_t have;
	struct held held[MAX_HELD];
	unsigned int nheld;
	bool uring_poll;		/* an io_uring poll is armed */
	struct iocb aio_cb;		/* an aio poll, while aio_armed */
	bool aio_armed;
};

static const char *ctl_path;
static struct channel ch[MAX_CHANNELS];
static unsigned int nch;
static uint64_t rng_state;
static unsigned long messages, steps, errors, reads, taken;
static uint64_t next_seq_guess;		/* near the seqs in flight */
static uint8_t *out;			/* a response being built */
static void *bad_ptr;			/* an unmapped page */
static aio_context_t aio;
static struct io_uring ring;
static volatile bool stopping;
static int reader_tokens[2];		/* a byte: the good reader takes one */
static atomic_bool reader_has_token;	/* a token is in the pipe or being used */

static uint64_t rnd(void)
{
	/* xorshift64*: small, and the same on every machine */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static unsigned int below(unsigned int n)
{
	return n ? rnd() % n : 0;
}

static void die(const char *what)
{
	fprintf(stderr, "protocol-fuzz: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int open_channel(void)
{
	int fd = open(ctl_path, O_RDWR | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		die("open");
	return fd;
}

static size_t message_size(const struct dm_user_message *m)
{
	return HDR + (m->type == DM_USER_REQ_MAP_WRITE ? m->len : 0);
}

/* Take @n bytes a read returned on @c; a message may be complete. */
static void take(struct channel *c, size_t n)
{
	struct dm_user_message *m = (void *)c->msg;

	c->have += n;
	if (c->have < HDR || c->have < message_size(m))
		return;
	taken++;
	next_seq_guess = m->seq + 1;
	if (c->nheld < MAX_HELD)
		c->held[c->nheld++] = (struct held){ m->seq, (uint32_t)m->type, m->len };
	c->have = 0;
}

static void step_read(struct channel *c)
{
	size_t want = 1 + below(below(4) ? HDR + 8192 : BUF - c->have);
	ssize_t n;

	if (want > BUF - c->have)
		want = BUF - c->have;
	n = read(c->fd, c->msg + c->have, want);
	if (n > 0) {
		reads++;
		take(c, n);
	}
	else if (n < 0 && errno != EAGAIN)
		errors++;
}

static void send_bytes(int fd, const void *p, size_t len, bool pieces)
{
	size_t done = 0, n;

	while (done < len) {
		n = pieces ? 1 + below(len - done) : len - done;
		if (write(fd, (const uint8_t *)p + done, n) < 0) {
			errors++;
			return;
		}
		done += n;
	}
}

/* A response to one of @c's held requests, right or wrong in one way. */
static void step_respond(struct channel *c)
{
	struct dm_user_message *m = (void *)out;
	unsigned int i = below(c->nheld), how = below(10);
	struct held h;
	size_t len;
	int fd = c->fd;

	if (!c->nheld || below(2)) {
		/* Nothing held, or not this time: a message for no request. */
		memset(m, 0, HDR);
		m->seq = below(2) ? rnd() : next_seq_guess + below(64);
		m->type = below(4);
		len = HDR + (below(4) ? 0 : below(8192));
		for (size_t j = HDR; j < len; j++)
			out[j] = rnd();
		send_bytes(fd, out, len, below(4) == 0);
		messages++;
		return;
	}
	h = c->held[i];
	memset(m, 0, HDR);
	m->seq = h.seq;
	m->type = below(8) ? DM_USER_RESP_SUCCESS : below(3);
	m->len = h.len;
	len = HDR;
	if (m->type == DM_USER_RESP_SUCCESS && h.type == DM_USER_REQ_MAP_READ)
		len += h.len;
	switch (how) {
	case 0:
		m->seq = below(2) ? h.seq + 1 + below(1000) : rnd();
		break;
	case 1:
		m->type = below(256);
		break;
	case 2:
		m->len = rnd();
		break;
	case 3:
		len = below(len);		/* too little: the next bytes continue it */
		break;
	case 4:
		fd = ch[below(nch)].fd;		/* perhaps another channel's */
		break;
	case 5:
		len = 1 + below(2 * HDR);	/* random bytes */
		for (size_t j = 0; j < len; j++)
			out[j] = rnd();
		break;
	default:
		break;
	}
	send_bytes(fd, out, len, below(4) == 0);
	messages++;
	if (how == 6) {			/* twice */
		send_bytes(fd, out, len, false);
		messages++;
	}
	if (below(8))
		c->held[i] = c->held[--c->nheld];
}

static void step_poll(struct channel *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN | POLLOUT };

	if (poll(&p, 1, below(2)) < 0)
		errors++;
}

static void step_epoll(struct channel *c)
{
	static const uint32_t modes[] = { 0, EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE };
	struct epoll_event ev = { .events = EPOLLIN | modes[below(4)] }, got;
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep < 0)
		die("epoll_create1");
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) == 0) {
		epoll_wait(ep, &got, 1, below(2));
		if (ev.events & EPOLLONESHOT && below(2)) {
			ev.events = EPOLLIN | EPOLLONESHOT;
			epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
			epoll_wait(ep, &got, 1, 0);
		}
	}
	close(ep);
}

static void reap_aio(long min)
{
	struct io_event ev[16];
	struct timespec limit = { 1, 0 };
	long n, i;

	n = syscall(SYS_io_getevents, aio, min, 16, ev, &limit);
	for (i = 0; i < n; i++)
		((struct channel *)(uintptr_t)ev[i].data)->aio_armed = false;
}

/* An aio poll stays armed until a request comes, or is cancelled at random. */
static void step_aio(struct channel *c)
{
	struct iocb *cbs[1] = { &c->aio_cb };
	struct io_event ev;

	if (!c->aio_armed) {
		c->aio_cb = (struct iocb){ .aio_fildes = c->fd, .aio_lio_opcode = IOCB_CMD_POLL,
					   .aio_buf = POLLIN, .aio_data = (uintptr_t)c };
		if (syscall(SYS_io_submit, aio, 1, cbs) == 1)
			c->aio_armed = true;
		else
			errors++;
	} else if (below(3) == 0) {
		syscall(SYS_io_cancel, aio, &c->aio_cb, &ev);
	}
	reap_aio(0);
}

static void step_uring(struct channel *c)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;

	if (!c->uring_poll && (sqe = io_uring_get_sqe(&ring))) {
		io_uring_prep_poll_add(sqe, c->fd, POLLIN);
		io_uring_sqe_set_data(sqe, c);
		c->uring_poll = true;
	} else if (c->uring_poll && below(3) == 0 && (sqe = io_uring_get_sqe(&ring))) {
		io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)c);
		io_uring_sqe_set_data(sqe, NULL);
	}
	io_uring_submit(&ring);
	while (io_uring_peek_cqe(&ring, &cqe) == 0) {
		struct channel *done = io_uring_cqe_get_data(cqe);

		if (done)
			done->uring_poll = false;
		io_uring_cqe_seen(&ring, cqe);
	}
}

static void step_ioctl(struct channel *c)
{
	static uint8_t arg[256];
	void *args[] = { NULL, (void *)1, bad_ptr, arg };
	unsigned long cmd;
	uint64_t flags;

	switch (below(4)) {
	case 0:
		cmd = DM_USER_IOC_GET_INFO;
		break;
	case 1:
		flags = below(2) ? DM_USER_CHANNEL_REQUEUE_ON_CLOSE : rnd();
		if (ioctl(c->fd, DM_USER_IOC_SET_CHANNEL_FLAGS, &flags) < 0)
			errors++;
		return;
	default:
		/* Only the module's magic: generic numbers (FIFREEZE...) act on /dev. */
		cmd = _IOC(below(4), _IOC_TYPE(DM_USER_IOC_GET_INFO), below(256), below(256));
		break;
	}
	for (size_t i = 0; i < sizeof(arg); i++)
		arg[i] = rnd();
	if (ioctl(c->fd, cmd, args[below(4)]) < 0)
		errors++;
}

/* Let the good reader take one request, unless it still waits for one. */
static void step_good_read(struct channel *c)
{
	(void)c;
	if (reader_has_token)
		return;
	reader_has_token = true;
	if (write(reader_tokens[1], "t", 1) != 1)
		errors++;
}

/*
 * Disarm @c's polls: an armed one holds the file, and with it the requests
 * the channel holds, until a request comes, which those requests may block.
 */
static void disarm(struct channel *c)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct io_event ev;

	if (c->aio_armed)
		syscall(SYS_io_cancel, aio, &c->aio_cb, &ev);
	while (c->aio_armed)
		reap_aio(1);
	if (c->uring_poll && (sqe = io_uring_get_sqe(&ring))) {
		io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)c);
		io_uring_sqe_set_data(sqe, NULL);
		io_uring_submit(&ring);
	}
	while (c->uring_poll && io_uring_wait_cqe(&ring, &cqe) == 0) {
		struct channel *done = io_uring_cqe_get_data(cqe);

		if (done)
			done->uring_poll = false;
		io_uring_cqe_seen(&ring, cqe);
	}
}

static void step_reopen(struct channel *c)
{
	disarm(c);
	close(c->fd);
	c->fd = open_channel();
	c->have = 0;
	c->nheld = 0;
}

/* A well-behaved blocking reader on a channel of its own. */
static void *good_reader(void *arg)
{
	uint8_t *buf = malloc(BUF);
	struct dm_user_message *m = (void *)buf;
	int fd = open(ctl_path, O_RDWR | O_CLOEXEC);

	(void)arg;
	if (!buf || fd < 0)
		die("good reader");
	while (!stopping) {
		ssize_t n;
		size_t len = HDR;
		char token;

		if (read(reader_tokens[0], &token, 1) != 1)
			break;
		n = read(fd, buf, BUF);
		reader_has_token = false;

		if (n < (ssize_t)HDR)
			break;		/* ENOTBLK, a signal, or the end */
		if (m->type == DM_USER_REQ_MAP_READ) {
			memset(m->buf, 0, m->len);
			len += m->len;
		}
		m->type = DM_USER_RESP_SUCCESS;
		if (write(fd, buf, len) < 0)
			break;
	}
	close(fd);
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	static char path[256];
	void (*const actions[])(struct channel *) = {
		step_read, step_read, step_read, step_respond, step_respond,
		step_respond, step_poll, step_epoll, step_aio, step_uring,
		step_ioctl, step_good_read,
	};
	unsigned long target;
	pthread_t reader;
	unsigned int i;

	if (argc < 4) {
		fprintf(stderr, "usage: protocol-fuzz CTL SEED MESSAGES [CHANNELS]\n");
		return 2;
	}
	snprintf(path, sizeof(path), "/dev/dm-user/%s", argv[1]);
	ctl_path = path;
	rng_state = strtoull(argv[2], NULL, 0) * 2 + 1;
	target = strtoul(argv[3], NULL, 0);
	nch = argc > 4 ? atoi(argv[4]) : 8;
	if (!nch || nch > MAX_CHANNELS)
		nch = 8;
	out = malloc(BUF);
	bad_ptr = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!out || bad_ptr == MAP_FAILED || syscall(SYS_io_setup, 256, &aio) ||
	    io_uring_queue_init(64, &ring, 0))
		die("setup");
	for (i = 0; i < nch; i++) {
		ch[i].fd = open_channel();
		ch[i].msg = malloc(BUF);
		if (!ch[i].msg)
			die("malloc");
	}
	if (pipe2(reader_tokens, O_CLOEXEC | O_NONBLOCK) ||
	    fcntl(reader_tokens[0], F_SETFL, 0) ||
	    pthread_create(&reader, NULL, good_reader, NULL))
		die("pthread_create");
	/* Bounded in steps too: a kernel that stops handing out requests ends it. */
	while (messages < target && steps < 50 * target) {
		struct channel *c = &ch[below(nch)];

		steps++;
		if (below(500) == 0)
			step_reopen(c);
		else
			actions[below(sizeof(actions) / sizeof(actions[0]))](c);
		if (steps % 100000 == 0)
			fprintf(stderr, "protocol-fuzz: %lu messages, %lu steps, %lu reads, %lu requests, %lu errors\n",
				messages, steps, reads, taken, errors);
	}
	stopping = true;
	for (i = 0; i < nch; i++) {
		disarm(&ch[i]);
		close(ch[i].fd);
	}
	io_uring_queue_exit(&ring);
	syscall(SYS_io_destroy, aio);
	/* The good reader leaves read() when the device goes or its channel gets a request. */
	pthread_detach(reader);
	printf("messages=%lu steps=%lu requests=%lu errors=%lu\n", messages, steps, taken, errors);
	return 0;
}
