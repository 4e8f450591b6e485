#!/bin/bash
# The module against a daemon that misbehaves or uses the stream in unusual
# ways: every case is tests/module-probe.c's "case NAME", which drives
# /dev/dm-user/CTL by hand while child processes do O_DIRECT I/O on the
# device. Each must end with the right errno for the daemon, the right result
# for the I/O, and a clean kernel log; the next case gets a fresh device.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/module-lib.bash"

# probe_case CASE [TABLE-OPTIONS...]: run one probe case on a fresh device.
probe_case() {
    probe_run proto "$@"
    dmsetup status proto
    # Whatever the case did, nothing may be left queued or in flight.
    idle proto || fail "requests left behind: $(dmsetup status proto)"
    dm_user_remove proto || fail "cannot remove the device"
}

t_unknown_seq() { probe_case unknown-seq; }
t_unknown_type() { probe_case unknown-type; }
t_short_header_close() { probe_case short-header-close; }
t_too_much_payload() { probe_case too-much-payload; }
t_too_little_payload_close() { probe_case too-little-payload-close; }
t_pieces() { probe_case pieces; }
t_other_channel() { probe_case other-channel; }
t_fault() { probe_case fault; }
t_channels_256() { probe_case channels; }

mtest proto-unknown-seq t_unknown_seq 120
mtest proto-unknown-type t_unknown_type 120
mtest proto-short-header-then-close t_short_header_close 120
mtest proto-too-much-payload t_too_much_payload 120
mtest proto-too-little-payload-then-close t_too_little_payload_close 120
mtest proto-messages-in-pieces t_pieces 120
mtest proto-answer-on-other-channel t_other_channel 120
mtest proto-read-into-bad-buffer t_fault 120
mtest proto-256-channels t_channels_256 180
vm_tests_run
