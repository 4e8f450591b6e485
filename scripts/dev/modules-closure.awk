# awk -v want="NAME..." -f modules-closure.awk /lib/modules/VER/modules.dep
# Prints the modules.dep paths that load NAME... in dependency order, each
# once; "MISSING NAME" for a name modules.dep does not know (built in, or
# absent). Names match with '-' and '_' alike. Used by the host (initramfs)
# and the guest (tests/vm/lib.sh).
function norm(s) {
    sub(/^.*\//, "", s)
    sub(/\.ko(\.(xz|zst|gz))?$/, "", s)
    gsub(/-/, "_", s)
    return s
}
function emit(m,    d, k, i) {
    if (m in done)
        return
    done[m] = 1
    if (!(m in path)) {
        print "MISSING " m
        return
    }
    # modules.dep lists the full dependency set, the deepest last.
    k = split(deps[m], d, " ")
    for (i = k; i >= 1; i--)
        emit(norm(d[i]))
    print path[m]
}
BEGIN {
    n = split(want, order, " ")
}
{
    f = $1
    sub(/:$/, "", f)
    m = norm(f)
    path[m] = f
    deps[m] = ""
    for (i = 2; i <= NF; i++)
        deps[m] = deps[m] " " $i
}
END {
    for (i = 1; i <= n; i++)
        emit(norm(order[i]))
}
