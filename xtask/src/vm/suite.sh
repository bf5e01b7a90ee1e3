# The privileged test suite once per hook family, on whatever kernel runs it: a test guest's
# /init runs it, and `cargo xtask vm-test` runs it on the host. `sh suite.sh DIR`, where DIR
# holds leaktrace and tests/*. Settings, from the environment:
#   SUITE_FAMILIES     the `--hooks` of each run, comma-separated (auto,tracepoint)
#   SUITE_EXPECT_AUTO  the family `--hooks auto` must pick here; empty: whatever it picks
#   SUITE_TESTS        the test files to run, comma-separated; empty: all of them
# The lines starting with LEAKTRACE-SUITE are what vm-test reads; the rest is for a human.
exec 2>&1
dir=$1
overall=PASS
# A test that cannot load eBPF fails instead of printing SKIPPED.
export LEAKTRACE_REQUIRE_PRIVILEGED=1
export LEAKTRACE_BIN="$dir/leaktrace"
for family in $(echo "$SUITE_FAMILIES" | tr , ' '); do
    expect=$family
    [ "$family" = auto ] && expect=$SUITE_EXPECT_AUTO
    # What this family attaches here, for the report; where it cannot start, why (a hook this
    # kernel refused is the reason that family's line fails with).
    errors=$(mktemp)
    start=$("$LEAKTRACE_BIN" --json --hooks "$family" --duration 1s 2>"$errors" | sed -n 1p)
    cat "$errors"
    echo "LEAKTRACE-SUITE family=$family start=$start"
    if [ -z "$start" ]; then
        echo "LEAKTRACE-SUITE family=$family error=$(sed -n 1p "$errors")"
    fi
    rm -f "$errors"
    result=PASS
    # One test at a time: each starts its own leaktrace, and ten loading at once on two
    # emulated CPUs miss the harness's timeouts (and soft-locked a 6.1 guest).
    for test in "$dir"/tests/*; do
        case ",${SUITE_TESTS:-${test##*/}}," in
        *",${test##*/},"*) ;;
        *) continue ;;
        esac
        if LEAKTRACE_HOOKS=$family LEAKTRACE_EXPECT_HOOKS=$expect "$test" --test-threads=1; then
            echo "LEAKTRACE-SUITE family=$family test=${test##*/} result=PASS"
        else
            echo "LEAKTRACE-SUITE family=$family test=${test##*/} result=FAIL"
            result=FAIL
            overall=FAIL
        fi
    done
    echo "LEAKTRACE-SUITE family=$family result=$result"
done
echo "LEAKTRACE-SUITE finished result=$overall"
