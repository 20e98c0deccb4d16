# f16_mma.cuh's fragment addressing without a GPU: one chunk (two k16 steps) of one block, its ldmatrix (plain for X,
# transposed for W) and mma.m16n8k16 emulated per the PTX ISA's fragment layouts, against a plain matmul. Checks the
# index arithmetic only (float32 here; the kernel rounds inputs to float16). Run: python3 native/probes/f16-mma-fragments.py
import numpy as np
rng = np.random.default_rng(1)
MT, K, COLS = 4, 32, 128
WROW, XROW = COLS + 8, K + 8
xs = rng.standard_normal((16 * MT, XROW)).astype(np.float32)
ws = rng.standard_normal((K, WROW)).astype(np.float32)

def ldmatrix_x4(addr_of_lane, trans):
    # addr_of_lane(lane) -> (array, row, col): lanes 8i..8i+7 give matrix i's rows
    mats = []
    for i in range(4):
        rows = []
        for r in range(8):
            arr, row, col = addr_of_lane(8 * i + r)
            rows.append(arr[row, col:col + 8])
        mats.append(np.array(rows))
    out = [[None] * 4 for _ in range(32)]
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            m = mats[i]
            out[lane][i] = (m[g, 2 * t], m[g, 2 * t + 1]) if not trans else (m[2 * t, g], m[2 * t + 1, g])
    return out

def mma16816(acc, a, b0, b1):
    # acc[lane] = [c0,c1,c2,c3]; a[lane] = 4 pairs; b0,b1[lane] = pairs
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2*t:2*t+2] = a[lane][0]; A[g+8, 2*t:2*t+2] = a[lane][1]
        A[g, 2*t+8:2*t+10] = a[lane][2]; A[g+8, 2*t+8:2*t+10] = a[lane][3]
        B[2*t:2*t+2, g] = b0[lane]; B[2*t+8:2*t+10, g] = b1[lane]
    C = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        acc[lane][0] += C[g, 2*t]; acc[lane][1] += C[g, 2*t+1]; acc[lane][2] += C[g+8, 2*t]; acc[lane][3] += C[g+8, 2*t+1]

worst = 0
for warp in range(4):
    acc = {(mt, j): [[0.0] * 4 for _ in range(32)] for mt in range(MT) for j in range(4)}
    for ks in (0, 16):
        a = {mt: ldmatrix_x4(lambda lane, mt=mt: (xs, 16 * mt + (lane & 15), ks + 8 * (lane >> 4)), False) for mt in range(MT)}
        for j in (0, 2):
            b = ldmatrix_x4(lambda lane: (ws, ks + ((lane >> 3) & 1) * 8 + (lane & 7), 32 * warp + 8 * (j + (lane >> 4))), True)
            for mt in range(MT):
                mma16816(acc[(mt, j)], a[mt], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                mma16816(acc[(mt, j + 1)], a[mt], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
    ref = xs[:, :K] @ ws[:, :COLS]
    for (mt, j), lanes in acc.items():
        for lane in range(32):
            g, t4 = lane // 4, lane % 4
            for h in range(2):
                m = 16 * mt + g + 8 * h
                n = 32 * warp + 8 * j + 2 * t4
                worst = max(worst, abs(lanes[lane][2*h] - ref[m, n]), abs(lanes[lane][2*h+1] - ref[m, n+1]))
print("worst abs difference", worst)
