import functools
import json
import os
import random
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

# Triton kernels run in Triton's CPU interpreter where there is no GPU (tests/model/test_fused_kernels.py);
# Triton reads this when it is imported, so it is set before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The suite never reaches a hub: transformers, datasets and lm-eval read only local files.
for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_flag, "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Every test starts from the same RNG state, so numbers do not depend on test order.
    torch.manual_seed(0)
    yield


DOMAIN_WORDS = {
    "cooking": "flour butter oven bake sugar whisk dough knead salt pepper simmer boil roast garlic onion".split(),
    "space": "orbit rocket planet star galaxy comet telescope gravity moon launch nebula asteroid probe".split(),
    "law": "court judge contract clause liability plaintiff statute appeal verdict counsel tort license".split(),
}


def make_corpus(folder, docs_per_domain=40, seed=0, broken=False):
    """A small synthetic multi-domain jsonl corpus: each domain draws words from its own vocabulary."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for domain, words in DOMAIN_WORDS.items():
        lines = []
        for i in range(docs_per_domain):
            n = rng.randint(30, 120)
            text = " ".join(rng.choice(words) for _ in range(n)) + f". Document {i} of {domain}."
            lines.append(json.dumps({"text": text, "domain": domain}))
        if broken and domain == "space":
            lines.insert(3, '{"text": "cut off')
            lines.insert(7, '{"title": "no text"}')
        path = folder / f"{domain}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A prepared folder of the synthetic corpus: L = 32, many small shards (4 sequences each)."""
    from lory_lightning.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("small")
    inputs = [str(p) for p in make_corpus(root / "in", docs_per_domain=60)]
    out = root / "data"
    prepare(PrepareConfig(output=str(out), inputs=inputs, seq_len=32, vocab_size=300, sequences_per_shard=4,
                          val_fraction=0.1), quiet=True)
    return out


@pytest.fixture
def http_root(tmp_path):
    """(root folder, base URL, list of requested paths) of an HTTP server on 127.0.0.1."""
    requested = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet, but remember what was asked for
            requested.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()
    server.server_close()
