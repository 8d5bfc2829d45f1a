#!/usr/bin/env python3
"""Round by round and in the median, the ratios of a vs_floor.sh run that had an earlier build:

    OUT=dir tools/benches/vs_floor.sh 10 <earlier-loadgen>
    tools/benches/vs_floor_summary.py dir spread low

For each round: CPU per message of the earlier build (before), this one (after) and the floor,
their ratios, p99 over the floor's, and PostgreSQL's CPU for the server's own sessions; then the
medians and how many rounds meet issue #19's goals (1.2x the floor's CPU; p99 within 1 ms of the
floor's for spread, 5 ms for the others).
"""
import json,sys,glob,statistics,re
d=sys.argv[1]
def L(f):
    j=json.load(open(f)); r=max(j['delivered_msgs_per_sec'],1)
    return dict(us=j['server']['cpu_cores']*1e6/r, p99=j['latency_ms']['p99'], p50=j['latency_ms']['p50'], pg=j.get('postgres_for_server_cpu_cores') or 0, pgall=j.get('postgres_cpu_cores') or 0, lost=j['lost'])
for sc in sys.argv[2:]:
    rounds=sorted({int(re.search(r'-(\d+)\.json',f).group(1)) for f in glob.glob(f'{d}/{sc}-after-*.json')})
    rows=[]
    for r in rounds:
        b,a,fl=[L(f'{d}/{sc}-{k}-{r}.json') for k in ('before','after','floor')]
        rows.append((b,a,fl))
        print(f"{sc} {r:2}: before {b['us']:6.2f} after {a['us']:6.2f} floor {fl['us']:6.2f} | b/f {b['us']/fl['us']:.2f}x a/f {a['us']/fl['us']:.2f}x | p99 b-f {b['p99']-fl['p99']:+6.2f} a-f {a['p99']-fl['p99']:+6.2f} | pg(server) b {b['pg']:.3f} a {a['pg']:.3f} lost {b['lost']+a['lost']+fl['lost']}")
    med=lambda xs: statistics.median(xs)
    print(f"{sc} median: b/f {med([b['us']/f['us'] for b,a,f in rows]):.2f}x a/f {med([a['us']/f['us'] for b,a,f in rows]):.2f}x  p99 b-f {med([b['p99']-f['p99'] for b,a,f in rows]):+.2f} a-f {med([a['p99']-f['p99'] for b,a,f in rows]):+.2f}  pg b {med([b['pg'] for b,a,f in rows]):.3f} a {med([a['pg'] for b,a,f in rows]):.3f}  a/b cpu {med([a['us']/b['us'] for b,a,f in rows]):.3f}")
    print(f"  a/f range {min(a['us']/f['us'] for b,a,f in rows):.2f}-{max(a['us']/f['us'] for b,a,f in rows):.2f}; rounds with a/f<=1.2: {sum(a['us']/f['us']<=1.2 for b,a,f in rows)}/{len(rows)}; p99 a-f <=1 (spread) / <=5 (low): {sum(a['p99']-f['p99']<= (1 if sc=='spread' else 5) for b,a,f in rows)}/{len(rows)}")
