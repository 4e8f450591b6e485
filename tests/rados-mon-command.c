/* rados-mon-command CONF JSON...: send each JSON command to the monitors in turn, through
 * librados, and print what each answers. The VM's one-node Ceph cluster
 * (tests/vm/ceph-lib.bash) needs a few mon commands (a new OSD, a pool); the python `ceph`
 * CLI costs 5-10 s a call under TCG, this a second or so for all of them.
 * Exit 0 when every command succeeded; else the first failure's reason on stderr, exit 1. */
#include <rados/librados.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	rados_t cluster;
	int r, i;

	if (argc < 3) {
		fprintf(stderr, "usage: %s CONF JSON...\n", argv[0]);
		return 2;
	}
	r = rados_create(&cluster, NULL);
	if (r == 0)
		r = rados_conf_read_file(cluster, argv[1]);
	if (r == 0)
		r = rados_connect(cluster);
	if (r < 0) {
		fprintf(stderr, "rados-mon-command: cannot reach the cluster of %s: %s\n", argv[1],
			strerror(-r));
		return 1;
	}
	for (i = 2; i < argc; i++) {
		const char *cmd[] = { argv[i] };
		char *outbuf = NULL, *outs = NULL;
		size_t outbuf_len = 0, outs_len = 0;

		r = rados_mon_command(cluster, cmd, 1, "", 0, &outbuf, &outbuf_len, &outs,
				      &outs_len);
		if (outbuf_len)
			printf("%.*s\n", (int)outbuf_len, outbuf);
		if (r < 0)
			fprintf(stderr, "rados-mon-command: %s: %s (%.*s)\n", argv[i], strerror(-r),
				(int)outs_len, outs ? outs : "");
		rados_buffer_free(outbuf);
		rados_buffer_free(outs);
		if (r < 0)
			break;
	}
	rados_shutdown(cluster);
	return r < 0 ? 1 : 0;
}
