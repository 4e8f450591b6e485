# Guest-side helpers for VM tests and ./dev vm commands: `source tests/vm/lib.sh`.
# See tests/vm/README.md. Runs inside the VM only (bash, as root).

VM_KVER=${VM_KVER:-$(uname -r)}

# vm_modload NAME...: load kernel modules and what they depend on with insmod
# of the real .ko from /lib/modules (there is no working autoload in the VM).
# Already loaded or built-in modules are skipped.
vm_modload() {
    local f name tmp
    while read -r f; do
        if [[ "$f" == MISSING\ * ]]; then
            name=${f#MISSING }
            [ -d "/sys/module/$name" ] && continue
            grep -Eq "/${name//_/[-_]}\.ko" "/lib/modules/$VM_KVER/modules.builtin" && continue
            echo "vm_modload: no module $name for $VM_KVER" >&2
            return 1
        fi
        name=${f##*/}
        name=${name%%.ko*}
        name=${name//-/_}
        [ -d "/sys/module/$name" ] && continue
        case "$f" in
            *.ko) insmod "/lib/modules/$VM_KVER/$f" ;;
            *.ko.xz | *.ko.zst | *.ko.gz)
                tmp=$(mktemp /tmp/mod.XXXXXX.ko)
                case "$f" in
                    *.xz) xz -dc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                    *.zst) zstd -qdc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                    *.gz) gzip -dc "/lib/modules/$VM_KVER/$f" >"$tmp" ;;
                esac && insmod "$tmp"
                local rc=$?
                rm -f "$tmp"
                [ $rc -eq 0 ]
                ;;
        esac || {
            echo "vm_modload: insmod $f failed" >&2
            return 1
        }
    done < <(awk -v want="$*" -f "$DEV_ROOT/scripts/dev/modules-closure.awk" \
        "/lib/modules/$VM_KVER/modules.dep")
}
