// SPDX-License-Identifier: GPL-2.0-only
/*
 * legacy-daemon: a RAM-backed dm-user daemon written the way daemons for
 * Android's dm-user module are written, to prove that Part 1 of the ABI
 * (docs: /work/shared/spec/dm-user-abi.md) works unchanged on this module.
 *
 * Each channel is one open() of /dev/dm-user/NAME served by one thread with
 * plain blocking I/O: read() the 40-byte header, read() the WRITE payload;
 * write() the response header, write() the READ payload. No ioctls, no poll,
 * no O_NONBLOCK. A read() failing with ENOTBLK means the target was removed:
 * the thread ends, and the daemon exits 0 when every channel has ended.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/dm-user.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

_Static_assert(sizeof(struct dm_user_message) == 40, "Part 1 header is 40 bytes");

#define SECTOR_SIZE 512

static const char *progname = "legacy-daemon";
static unsigned char *store;
static uint64_t store_size;
static bool verbose;

struct channel {
	pthread_t thread;
	int index;
	int fd;
	uint64_t requests;
	uint64_t errors; /* requests answered with ERROR/UNSUPPORTED */
	char *scratch; /* payload of a request outside the store */
	size_t scratch_size;
};

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: %s [-c CHANNELS] [-v] CONTROL SIZE\n"
		"\n"
		"Serve the dm-user target whose control device is CONTROL (a name under\n"
		"/dev/dm-user/, or a path) from SIZE bytes of memory (suffix K, M or G),\n"
		"speaking only Part 1 of the ABI: blocking header-then-payload read()s and\n"
		"write()s, one thread per channel. Exits 0 once the target is removed\n"
		"(read() fails with ENOTBLK on every channel), 1 on any other error.\n"
		"\n"
		"  -c CHANNELS  open the control device this many times (default 1)\n"
		"  -v           report each channel's end and its request count\n"
		"  -h           this text\n"
		"\n"
		"example: dmsetup create ud --table \"0 524288 user 0 524288 ud\"\n"
		"         %s -c 4 ud 256M &\n",
		progname, progname);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v;
	int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		die("bad SIZE '%s'", s);
	switch (*end) {
	case 'G': case 'g': shift = 30; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'K': case 'k': shift = 10; end++; break;
	case '\0': break;
	default: die("bad SIZE '%s' (use a number with K, M or G)", s);
	}
	if (*end || v == 0 || v > (UINT64_MAX >> shift))
		die("bad SIZE '%s'", s);
	v <<= shift;
	if (v % SECTOR_SIZE)
		die("SIZE must be a multiple of %d bytes", SECTOR_SIZE);
	return v;
}

/*
 * read()/write() until len bytes moved. Returns 0, or the errno that stopped
 * it (ENOTBLK included: the caller decides). A short count of 0 from read()
 * (end of file) is reported as EPIPE: the ABI never ends a stream that way.
 */
static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			return EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The store's bytes for a request, or NULL when it reaches past the end. */
static unsigned char *store_range(const struct dm_user_message *msg)
{
	uint64_t off;

	if (msg->sector > store_size / SECTOR_SIZE)
		return NULL;
	off = msg->sector * SECTOR_SIZE;
	if (msg->len > store_size - off)
		return NULL;
	return store + off;
}

static void *scratch_for(struct channel *ch, uint64_t len)
{
	if (len > ch->scratch_size) {
		char *p = realloc(ch->scratch, len);

		if (!p)
			die("channel %d: out of memory for a %" PRIu64 "-byte payload", ch->index, len);
		ch->scratch = p;
		ch->scratch_size = len;
	}
	return ch->scratch;
}

static const char *op_name(uint64_t type)
{
	static const char *const names[] = {
		"READ", "WRITE", "FLUSH", "DISCARD", "SECURE_ERASE", "WRITE_SAME",
		"WRITE_ZEROES", "ZONE_OPEN", "ZONE_CLOSE", "ZONE_FINISH",
		"ZONE_APPEND", "ZONE_RESET", "ZONE_RESET_ALL",
	};

	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

/* Serve one request whose header is in *msg; 0 or the errno of the channel. */
static int serve(struct channel *ch, struct dm_user_message *msg)
{
	unsigned char *data = store_range(msg);
	uint64_t type = msg->type;
	int err;

	msg->type = DM_USER_RESP_SUCCESS;
	switch (type) {
	case DM_USER_REQ_MAP_WRITE:
		/* The payload follows the header; it is read even when it cannot be stored. */
		err = read_full(ch->fd, data ? (void *)data : scratch_for(ch, msg->len), msg->len);
		if (err)
			return err;
		if (!data)
			msg->type = DM_USER_RESP_ERROR;
		break;
	case DM_USER_REQ_MAP_READ:
		if (!data) {
			msg->type = DM_USER_RESP_ERROR;
			break;
		}
		err = write_full(ch->fd, msg, sizeof(*msg));
		return err ? err : write_full(ch->fd, data, msg->len);
	case DM_USER_REQ_MAP_FLUSH:
		break; /* memory is as durable as it gets */
	case DM_USER_REQ_MAP_DISCARD:
	case DM_USER_REQ_MAP_WRITE_ZEROES:
	case DM_USER_REQ_MAP_SECURE_ERASE:
		if (data)
			memset(data, 0, msg->len);
		else
			msg->type = DM_USER_RESP_ERROR;
		break;
	default:
		fprintf(stderr, "%s: channel %d: unsupported request %s (%" PRIu64 ")\n",
			progname, ch->index, op_name(type), type);
		msg->type = DM_USER_RESP_UNSUPPORTED;
		break;
	}
	if (msg->type != DM_USER_RESP_SUCCESS)
		ch->errors++;
	return write_full(ch->fd, msg, sizeof(*msg));
}

static void *channel_main(void *arg)
{
	struct channel *ch = arg;
	struct dm_user_message msg;
	uint64_t type;
	int err;

	for (;;) {
		err = read_full(ch->fd, &msg, sizeof(msg));
		if (err == ENOTBLK)
			break;
		if (err)
			die("channel %d: reading a request header: %s", ch->index, strerror(err));
		ch->requests++;
		type = msg.type;
		err = serve(ch, &msg);
		if (err == ENOTBLK)
			break;
		if (err)
			die("channel %d: seq %" PRIu64 " %s sector %" PRIu64 " len %" PRIu64 ": %s",
			    ch->index, msg.seq, op_name(type), msg.sector, msg.len, strerror(err));
	}
	if (verbose)
		fprintf(stderr, "%s: channel %d: target removed after %" PRIu64 " requests (%" PRIu64
			" answered with an error)\n", progname, ch->index, ch->requests, ch->errors);
	return NULL;
}

int main(int argc, char **argv)
{
	char path[PATH_MAX];
	struct channel *channels;
	long nr_channels = 1;
	uint64_t total = 0;
	int opt, i;

	progname = argv[0];
	while ((opt = getopt(argc, argv, "c:vh")) != -1) {
		switch (opt) {
		case 'c': {
			char *end;

			nr_channels = strtol(optarg, &end, 10);
			if (*end || nr_channels < 1 || nr_channels > 1024)
				die("-c wants 1..1024 channels, got '%s'", optarg);
			break;
		}
		case 'v':
			verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	if (strchr(argv[optind], '/'))
		snprintf(path, sizeof(path), "%s", argv[optind]);
	else
		snprintf(path, sizeof(path), "/dev/dm-user/%s", argv[optind]);
	store_size = parse_size(argv[optind + 1]);
	store = mmap(NULL, store_size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (store == MAP_FAILED)
		die("cannot map %" PRIu64 " bytes of store: %s", store_size, strerror(errno));

	channels = calloc((size_t)nr_channels, sizeof(*channels));
	if (!channels)
		die("out of memory");
	for (i = 0; i < nr_channels; i++) {
		channels[i].index = i;
		channels[i].fd = open(path, O_RDWR | O_CLOEXEC);
		if (channels[i].fd < 0)
			die("cannot open %s: %s", path, strerror(errno));
	}
	for (i = 0; i < nr_channels; i++) {
		int err = pthread_create(&channels[i].thread, NULL, channel_main, &channels[i]);

		if (err)
			die("cannot start channel %d: %s", i, strerror(err));
	}
	for (i = 0; i < nr_channels; i++) {
		pthread_join(channels[i].thread, NULL);
		total += channels[i].requests;
		close(channels[i].fd);
		free(channels[i].scratch);
	}
	if (verbose)
		fprintf(stderr, "%s: %s removed; %" PRIu64 " requests served on %ld channel(s)\n",
			progname, path, total, nr_channels);
	free(channels);
	return 0;
}
