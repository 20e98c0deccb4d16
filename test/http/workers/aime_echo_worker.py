# A tiny worker on AIME's own, unchanged worker library (aime_api_worker_interface): takes one job from the API
# server, posts one progress update and a result ("echo: <last user message>"), then exits.
# usage: python3 aime_echo_worker.py LIB_DIR API_SERVER WORKER_KEY
import os
import sys

lib, server, key = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, lib)
# The library reads terminal settings from stdin (for its 'q' to quit); a test has no terminal: give it a pty.
master, slave = os.openpty()
os.dup2(slave, 0)

# Pillow is only needed for image outputs; where it is not installed, a stand-in lets the library load unchanged.
try:
    import PIL.PngImagePlugin  # noqa: F401
except ImportError:
    import types
    pil = types.ModuleType("PIL")
    png = types.ModuleType("PIL.PngImagePlugin")
    png.PngInfo = object
    pil.PngImagePlugin = png
    sys.modules["PIL"] = pil
    sys.modules["PIL.PngImagePlugin"] = png

from aime_api_worker_interface import APIWorkerInterface  # noqa: E402

api = APIWorkerInterface(server, "llama3", key, gpu_id=0, world_size=1, rank=0, gpu_name="Test GPU", num_gpus=1,
                         worker_version=7, model_label="echo", model_quantization="none", model_size="0B",
                         model_family="Echo", model_type="LLM", request_timeout=10)
job = api.job_request()
ctx = job.get("chat_context") or []
last = ctx[-1]["content"] if ctx else job.get("prompt_input", "")
api.send_progress(1, {"text": "echo:"}, job_data=job)
api.send_job_results({"text": f"echo: {last}", "num_generated_tokens": 2}, job_data=job)
print("ECHO WORKER DONE", flush=True)
os._exit(0)
