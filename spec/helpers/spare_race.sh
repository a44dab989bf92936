#!/bin/sh
# Two rotor processes write the slot file x.json in DIR, run by spec/durable_spec.lua:
#   spare_race.sh ROTOR PRELOAD DIR MARKS A_AT B_AT
# A writes records 1 and 2 (two group commits) and is held at A_AT (see spec/helpers/spare_hold.c)
# while B writes record 3, held at B_AT or not at all ("none"). Then A is let go and runs to its
# end, then B. Prints each process's exit status and output, and what x.json holds at the end.
# MARKS is a fresh directory for the hold marks (MARKS/a, MARKS/b).
rotor=$1 preload=$2 dir=$3 marks=$4 a_at=$5 b_at=$6
mkdir -p "$marks/a" "$marks/b" || exit 2
wait_for() {
  i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1))
    if [ "$i" -gt 15000 ]; then echo "timed out waiting for $1"; return 1; fi
    sleep 0.002
  done
}
LD_PRELOAD=$preload ROTOR_SPARE_NAME=x.json.tmp.spare ROTOR_HOLD_AT=$a_at ROTOR_HOLD_DIR=$marks/a \
  "$rotor" spec/helpers/spare_race.lua "$dir" 1 2 >"$marks/a.out" 2>&1 &
a=$!
wait_for "$marks/a/held" || { kill -9 "$a"; exit 3; }
LD_PRELOAD=$preload ROTOR_SPARE_NAME=x.json.tmp.spare ROTOR_HOLD_AT=$b_at ROTOR_HOLD_DIR=$marks/b \
  "$rotor" spec/helpers/spare_race.lua "$dir" 3 3 >"$marks/b.out" 2>&1 &
b=$!
if [ "$b_at" = none ]; then
  wait "$b"; b_rc=$?
else
  wait_for "$marks/b/held" || { kill -9 "$a" "$b"; exit 3; }
fi
touch "$marks/a/release"
wait "$a"; a_rc=$?
if [ "$b_at" != none ]; then
  touch "$marks/b/release"
  wait "$b"; b_rc=$?
fi
echo "a $a_rc: $(cat "$marks/a.out")"
echo "b $b_rc: $(cat "$marks/b.out")"
echo "x.json: $(cat "$dir/x.json")"
