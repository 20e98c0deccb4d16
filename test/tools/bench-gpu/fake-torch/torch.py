"""A stand-in for the few torch calls make_weights.py makes, so that its writing path runs where torch is absent
(test/tools/bench-gpu/make_weights.test.ts). A tensor records its shape and the generator state it was drawn at;
the generator advances by the elements drawn, as torch's Philox offset does, so a resumed run that fails to redraw
skipped tensors writes different values from an uninterrupted one."""

float16 = "float16"


class device:
    def __init__(self, spec):
        self.type = str(spec).split(":")[0]


class cuda:
    @staticmethod
    def is_available():
        return False


class Generator:
    def __init__(self, device=None):
        self.state = 0

    def manual_seed(self, seed):
        self.state = seed


class Tensor:
    def __init__(self, shape, value):
        self.shape, self.value = tuple(shape), value

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def mul_(self, factor):
        self.value = [self.value, factor]
        return self

    def cpu(self):
        return self


def randn(shape, generator, device, dtype):
    t = Tensor(shape, generator.state)
    generator.state += t.numel()
    return t


def ones(shape, dtype):
    return Tensor(shape, "ones")
