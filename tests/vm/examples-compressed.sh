# dmuser-compressed in the VM: byte-identical reads of images made by dmuser-mkimage, no writes
# without an overlay, copy-on-write with one (integrity, ext4, persistence), and a damaged chunk
# failing only its own range.
source "$DEV_ROOT/tests/vm/lib.sh"
source "$DEV_ROOT/tests/vm/examples-lib.bash"

# A 64 MiB disk-like raw image: text, noise, zeros, base64 (made in the guest: 9p is slow).
make_raw() {
    [ "$(stat -c %s /tmp/raw 2>/dev/null)" = $((64 << 20)) ] && return 0
    {
        seq -f 'line %.0f of a sample text, compressible' 1 1000000 | head -c 16M
        head -c 16M /dev/urandom
        head -c 16M /dev/zero
        head -c 12M /dev/urandom | base64 -w 76 | head -c 16M
    } >/tmp/raw.part
    [ "$(stat -c %s /tmp/raw.part)" -eq $((64 << 20)) ] || fail "raw image is not 64 MiB"
    mv /tmp/raw.part /tmp/raw
}

# mkimage RAW IMAGE [OPT...]
mkimage() {
    need_cmd "$EX_BIN/dmuser-mkimage"
    "$EX_BIN/dmuser-mkimage" "$@" || fail "dmuser-mkimage $*"
}

# u64 / u32 little-endian at a byte offset of a file
u64_at() { od -An -t u8 -j "$2" -N 8 "$1" | tr -d ' '; }
u32_at() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }

t_cmp() {
    make_raw
    mkimage --verify /tmp/raw /tmp/img
    mkimage --fast --chunk-size 16K /tmp/raw /tmp/img.lz4
    ex_start cz cz dmuser-compressed --threads 2 --channels 4 --cache 8 /tmp/img
    cmp /dev/mapper/cz /tmp/raw || fail "zstd image: device differs from the raw image"
    ex_stop cz cz
    ex_start cz cz dmuser-compressed /tmp/img.lz4
    cmp /dev/mapper/cz /tmp/raw || fail "lz4 image: device differs from the raw image"
    dd if=/dev/mapper/cz of=/dev/null bs=1M iflag=direct 2>&1 | tail -n1
    ex_stop cz cz
}

t_readonly() {
    make_raw
    mkimage --fast /tmp/raw /tmp/img.ro
    ex_start cz cz dmuser-compressed /tmp/img.ro
    [ "$(blockdev --getro /dev/mapper/cz)" = 1 ] || fail "device without overlay is not read-only"
    if dd if=/dev/zero of=/dev/mapper/cz bs=4k count=1 oflag=direct status=none 2>/dev/null; then
        fail "a write without overlay succeeded"
    fi
    cmp -n 4096 /dev/mapper/cz /tmp/raw || fail "contents changed after a refused write"
    ex_stop cz cz
}

t_overlay() {
    make_raw
    mkimage /tmp/raw /tmp/img.ov
    rm -f /tmp/overlay
    dd if=/dev/urandom of=/tmp/data bs=1M count=1 status=none
    ex_start cz cz dmuser-compressed --overlay /tmp/overlay /tmp/img.ov
    dd if=/tmp/data of=/dev/mapper/cz bs=1M seek=5 oflag=direct conv=fsync status=none ||
        fail "write with an overlay failed"
    # A sub-page write too: sector granularity.
    printf 'sector' | dd of=/dev/mapper/cz bs=512 seek=$((40 * 2048 + 3)) conv=sync,fsync oflag=direct status=none ||
        fail "sector write failed"
    cmp <(dd if=/dev/mapper/cz bs=1M skip=5 count=1 iflag=direct status=none) /tmp/data ||
        fail "reads do not see the write"
    ex_stop cz cz
    # The image itself is never written: making it again gives the same bytes.
    mkimage --verify /tmp/raw /tmp/img.check && cmp /tmp/img.ov /tmp/img.check ||
        fail "the image file changed"
    ex_start cz cz dmuser-compressed --overlay /tmp/overlay /tmp/img.ov
    cmp <(dd if=/dev/mapper/cz bs=1M skip=5 count=1 iflag=direct status=none) /tmp/data ||
        fail "the overlay lost the write across a restart"
    dd if=/dev/mapper/cz bs=512 skip=$((40 * 2048 + 3)) count=1 status=none | grep -q '^sector' ||
        fail "the sector write is lost"
    cmp -n $((5 << 20)) /dev/mapper/cz /tmp/raw || fail "unwritten range before differs from the image"
    cmp <(dd if=/dev/mapper/cz bs=1M skip=6 count=30 iflag=direct status=none) \
        <(dd if=/tmp/raw bs=1M skip=6 count=30 status=none) || fail "unwritten range after differs"
    ex_stop cz cz
    rm -f /tmp/overlay /tmp/data /tmp/img.check
}

# fio verify and ext4 need a writable device: a zero image with an overlay. fio verify at QD1
# and QD32 over the whole 32 MiB device, through 1 or 4 channels ($1).
t_verify() {
    local channels=$1 threads=1
    [ "$channels" -gt 1 ] && threads=2
    truncate -s 32M /tmp/zero.raw
    mkimage --fast /tmp/zero.raw /tmp/zero.img
    rm -f /tmp/overlay
    ex_start cz cz dmuser-compressed --threads "$threads" --channels "$channels" \
        --overlay /tmp/overlay /tmp/zero.img
    ex_fio /dev/mapper/cz 1
    ex_fio /dev/mapper/cz 32
    ex_stop cz cz
    rm -f /tmp/overlay /tmp/zero.img /tmp/zero.raw
}
t_verify_1ch() { t_verify 1; }
t_verify_4ch() { t_verify 4; }

t_ext4() {
    truncate -s 128M /tmp/zero.raw
    mkimage --fast /tmp/zero.raw /tmp/zero.img
    rm -f /tmp/overlay
    ex_start cz cz dmuser-compressed --threads 2 --overlay /tmp/overlay /tmp/zero.img
    ex_ext4 /dev/mapper/cz
    ex_stop cz cz
    rm -f /tmp/overlay /tmp/zero.img /tmp/zero.raw
}

# Damage one byte of a chunk's stored bytes: that chunk's range fails, its neighbours read
# right, and the log names the chunk and its offsets.
t_corrupt() {
    make_raw
    mkimage --chunk-size 64K /tmp/raw /tmp/img.bad
    local index_offset chunk=10 entry offset size
    index_offset=$(u64_at /tmp/img.bad 40)
    for chunk in 10 300; do # compressed text, stored-raw noise
        entry=$((index_offset + 24 * chunk))
        offset=$(u64_at /tmp/img.bad "$entry")
        size=$(u32_at /tmp/img.bad $((entry + 8)))
        [ "$size" -gt 0 ] || fail "chunk $chunk stores nothing"
        printf '\x5a' | dd of=/tmp/img.bad bs=1 seek=$((offset + size / 2)) conv=notrunc status=none
        echo "damaged chunk $chunk (file offset $offset, $size stored bytes)"
    done
    ex_start cz cz dmuser-compressed /tmp/img.bad
    for chunk in 10 300; do
        if dd if=/dev/mapper/cz of=/dev/null bs=64k skip="$chunk" count=1 iflag=direct status=none 2>/dev/null; then
            fail "reading damaged chunk $chunk succeeded"
        fi
        for n in $((chunk - 1)) $((chunk + 1)); do
            cmp <(dd if=/dev/mapper/cz bs=64k skip="$n" count=1 iflag=direct status=none) \
                <(dd if=/tmp/raw bs=64k skip="$n" count=1 status=none) ||
                fail "chunk $n next to damaged chunk $chunk does not read right"
        done
    done
    cmp <(dd if=/dev/mapper/cz bs=64k skip=11 count=289 iflag=direct status=none) \
        <(dd if=/tmp/raw bs=64k skip=11 count=289 status=none) || fail "the range between differs"
    ex_stop cz cz
    grep -q "corrupt chunk 10 (image bytes 0xa0000" "$VMT_OUT/logs/corrupt-chunk.log" ||
        fail "the log does not name chunk 10 and its offset"
    grep -q "corrupt chunk 300 (image bytes 0x12c0000" "$VMT_OUT/logs/corrupt-chunk.log" ||
        fail "the log does not name chunk 300 and its offset"
}

t_cli_errors() {
    "$EX_BIN/dmuser-compressed" --help >/tmp/help || fail "--help exited $?"
    for opt in --name --overlay --cache --threads --channels IMAGE; do
        grep -q -- "$opt" /tmp/help || fail "--help does not mention $opt"
    done
    ex_one_line_error 'cannot open /nonexistent' "$EX_BIN/dmuser-compressed" --name bad /nonexistent
    head -c 1M /dev/zero >/tmp/notimage
    ex_one_line_error 'not a dmuser compressed image' "$EX_BIN/dmuser-compressed" --name bad /tmp/notimage
    make_raw
    mkimage --fast /tmp/raw /tmp/img.a
    mkimage --fast --chunk-size 32K /tmp/raw /tmp/img.b
    rm -f /tmp/overlay
    ex_start cz cz dmuser-compressed --overlay /tmp/overlay /tmp/img.a
    ex_stop cz cz
    ex_one_line_error 'another image' "$EX_BIN/dmuser-compressed" --name bad --overlay /tmp/overlay /tmp/img.b
    dmsetup info bad >/dev/null 2>&1 && fail "a failed start left device 'bad' behind"
    rm -f /tmp/notimage /tmp/img.a /tmp/img.b /tmp/overlay
}

vm_test cmp-raw t_cmp 300
vm_test no-overlay-readonly t_readonly 150
vm_test overlay-cow t_overlay 240
vm_test verify-overlay-1ch t_verify_1ch 300
vm_test verify-overlay-4ch t_verify_4ch 300
vm_test ext4-overlay t_ext4 300
vm_test corrupt-chunk t_corrupt 240
vm_test cli-errors t_cli_errors 180
vm_tests_run
