# The functions with the most self time in each V8 CPU profile of a folder (`node --cpu-prof --cpu-prof-dir DIR`, one
# file a thread): python3 native/probes/cpuprofile-top.py DIR [count]. Native code called from JavaScript (ONNX
# Runtime's run, CUDA copies) counts as its caller's self time.
import collections
import glob
import json
import os
import sys

folder = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
for path in sorted(glob.glob(os.path.join(folder, "*.cpuprofile"))):
    profile = json.load(open(path))
    nodes = {n["id"]: n for n in profile["nodes"]}
    self_us = collections.Counter()
    for sample, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[sample]["callFrame"]
        self_us[f"{frame['functionName'] or '(anonymous)'} {os.path.basename(frame['url'])}:{frame['lineNumber'] + 1}"] += delta
    print(f"{os.path.basename(path)}: {sum(self_us.values()) / 1000:.0f} ms sampled")
    for name, us in self_us.most_common(count):
        print(f"  {us / 1000:9.1f} ms  {name}")
