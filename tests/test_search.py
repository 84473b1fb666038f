"""Product search (python -m mmf_fashionvil.tools.search) with a tiny XMR model trained once
for this module: the text search ranks as the run's TIR evaluation did, faiss agrees with
the exact search, image + text queries rank like compose() against the gallery, indexing
resumes and refuses another model's index, the web page works in a real headless browser,
and bad input gets clear errors."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

from helpers import MMF_RUN, REPO, final_metrics, free_port, run_command, short_run_args
from mmf_fashionvil.data.captions import entry_text
from mmf_fashionvil.tools.search.index import (
    SearchError, SearchIndex, build_index, fashiongen_items, folder_items,
)
from mmf_fashionvil.tools.search.query import run_query

XMR_TINY = "projects/fashionvil/configs/finetuning/xmr_tiny.yaml"
SEARCH = [sys.executable, "-m", "mmf_fashionvil.tools.search"]
TIR = "val/fashiongen/fashionvil_retrieval/general/tir_r@{}"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tiny_catalog, tmp_path_factory):
    """(save dir, checkpoint) of a 2-update XMR run on the tiny catalog."""
    save_dir = tmp_path_factory.mktemp("search_xmr")
    code, output = run_command([MMF_RUN, f"config={XMR_TINY}",
                                *short_run_args("fashiongen", updates=2),
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    return str(save_dir), str(save_dir / "current.ckpt")


@pytest.fixture(scope="module")
def api(trained):
    from mmf_fashionvil.inference import load

    return load(trained[1], device="cpu")


@pytest.fixture(scope="module")
def fashiongen_index(trained, tiny_catalog, tmp_path_factory):
    """The val split of the catalog's FashionGen part, indexed by the command line."""
    out = tmp_path_factory.mktemp("search_index") / "fashiongen_val"
    code, output = run_command([*SEARCH, "index", "--checkpoint", trained[1],
                                "--data-dir", tiny_catalog, "--dataset", "fashiongen",
                                "--split", "val", "--out", str(out), "--chunk-size", "10"])
    assert code == 0, output[-4000:]
    assert "unreadable" in output and "0 unreadable skipped" in output, output
    return str(out)


@pytest.fixture(scope="module")
def val_products(tiny_catalog):
    with open(os.path.join(tiny_catalog, "datasets/FashionGen/val_info.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def fashioniq(tiny_catalog):
    """(image folder, val triplets (candidate, target, joined captions)) of FashionIQ."""
    root = os.path.join(tiny_catalog, "datasets", "FashionIQ")
    triplets = []
    for category in ("dress", "shirt", "toptee"):
        with open(os.path.join(root, "captions", f"cap.{category}.val.json")) as f:
            for entry in json.load(f):
                # The captions joined as the FashionIQ dataset joins them.
                triplets.append((entry["candidate"], entry["target"],
                                 ", ".join(c.strip() for c in entry["captions"])))
    return os.path.join(root, "images"), triplets


@pytest.fixture(scope="module")
def fashioniq_index(api, trained, fashioniq, tmp_path_factory):
    folder, _ = fashioniq
    out = tmp_path_factory.mktemp("search_index") / "fashioniq"
    source, items = folder_items(folder)
    build_index(api, source, items, str(out), trained[1], chunk_size=32, log=lambda m: None)
    return str(out)


def search_json(arguments):
    """(exit code, the printed JSON, stderr) of ``query ... --json``."""
    result = subprocess.run([*SEARCH, *arguments, "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr


class CountingApi:
    """An inference API that counts the images it embeds, optionally interrupted (as Ctrl-C
    does) at the encode call number ``interrupt_at``, or claiming another fingerprint."""

    def __init__(self, api, interrupt_at=None, fingerprint=None):
        self.api, self.interrupt_at = api, interrupt_at
        self.fingerprint = fingerprint or api.fingerprint
        self.max_image_pixels = api.max_image_pixels
        self.calls, self.images = 0, 0

    def encode_images(self, images, batch_size=32, progress=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.api.encode_images(images, batch_size=batch_size, progress=progress)


def assert_same_ranking(ranked_ids, ids, scores, ranked_scores=None, tolerance=1e-5):
    """The search's ``ranked_ids`` (best first; with ``ranked_scores``) rank as ``scores``
    [N] of the items ``ids``, computed independently, do: at every rank an item whose score
    is that rank's score (and the same scores). Items whose scores differ by float rounding
    only (within ``tolerance``: the last bits of a float32 dot product depend on the BLAS
    kernel and the memory alignment) may trade places; every other pair keeps its order."""
    ranked = torch.sort(scores, descending=True, stable=True)
    expected_scores = ranked.values[:len(ranked_ids)].tolist()
    if ranked_scores is not None:
        assert list(ranked_scores) == pytest.approx(expected_scores, abs=tolerance)
    score_of = dict(zip(ids, scores.tolist()))
    assert len(set(ranked_ids)) == len(ranked_ids)
    for rank, (item, expected) in enumerate(zip(ranked_ids, expected_scores), 1):
        assert abs(score_of[item] - expected) <= tolerance, (rank, item, expected)


def scores_by_row(api, index, text, reference=None):
    """Every item's score for a query, in index row order (through the search itself)."""
    results = run_query(api, index, text, reference=reference, top_k=len(index),
                        include_reference=True)["results"]
    return torch.tensor([r["score"] for r in sorted(results, key=lambda r: r["row"])])


def quiet(message):
    pass


def assert_same_index(a, b):
    index_a, index_b = SearchIndex(a), SearchIndex(b)
    assert index_a.items == index_b.items
    assert torch.allclose(index_a.embeddings, index_b.embeddings, atol=1e-5)
    assert index_a.meta["count"] == index_b.meta["count"] == len(index_a.items)


# -------------------------------------------------------------------- 1. text search
def test_text_search_ranks_as_the_runs_tir_evaluation(
        trained, api, fashiongen_index, val_products, tmp_path):
    """Each val product's caption as a query: the share of products with an image in the
    top K is the run's final val TIR R@K (K = 1, 5, 10): the search ranks as the metric."""
    save_dir, checkpoint = trained
    index = SearchIndex(fashiongen_index)
    assert len(index) == sum(len(p["images"]) for p in val_products)
    assert index.meta["fingerprint"] == api.fingerprint
    assert index.meta["dim"] == index.embeddings.shape[1]
    found = {1: 0, 5: 0, 10: 0}
    for product in val_products:
        answer = run_query(api, index, entry_text(product), top_k=10)
        products = [r["product"] for r in answer["results"]]
        assert len(products) == 10
        for k in found:
            found[k] += product["id"] in products[:k]
    metrics = final_metrics(save_dir, "val")
    for k, count in found.items():
        assert 100.0 * count / len(val_products) == pytest.approx(metrics[TIR.format(k)])

    # The command line gives the same results, and draws them.
    caption = entry_text(val_products[0])
    grid, page = tmp_path / "grid.png", tmp_path / "page.html"
    printed, _ = search_json(["query", "--index", fashiongen_index, "--checkpoint", checkpoint,
                              "--text", caption, "--top-k", "7", "--grid", str(grid),
                              "--html", str(page)])
    expected = run_query(api, index, caption, top_k=7)["results"]
    ids, scores = [item["id"] for item in index.items], scores_by_row(api, index, caption)
    assert len(printed["results"]) == 7
    assert_same_ranking([r["id"] for r in printed["results"]], ids, scores,
                        [r["score"] for r in printed["results"]])
    assert printed["results"][0]["caption"] and printed["results"][0]["category"]
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 100
    html = page.read_text()
    assert all(f'data-id="{r["id"]}"' in html for r in expected)
    assert html.count('class="result"') == 7 and "data:image/png;base64," in html

    # Plain text output: one line per result, best first.
    code, output = run_command([*SEARCH, "query", "--index", fashiongen_index, "--text",
                                caption, "--top-k", "3"])
    assert code == 0, output[-4000:]
    lines = [line.split() for line in output.splitlines() if line[:4].strip().isdigit()]
    assert [int(line[0]) for line in lines] == [1, 2, 3]
    assert_same_ranking([line[1] for line in lines], ids, scores,
                        [float(line[2]) for line in lines], tolerance=1e-4)


# --------------------------------------------------------------------- 2. faiss backend
def test_faiss_backend_gives_the_exact_results(api, fashiongen_index, val_products):
    index = SearchIndex(fashiongen_index)
    ids = [item["id"] for item in index.items]
    for product in val_products:
        for k in (5, len(index)):
            exact = run_query(api, index, entry_text(product), top_k=k)["results"]
            approximate = run_query(api, index, entry_text(product), top_k=k,
                                    backend="faiss")["results"]
            assert len(approximate) == len(exact) == k
            scores = scores_by_row(api, index, entry_text(product))
            assert_same_ranking([r["id"] for r in approximate], ids, scores,
                                [r["score"] for r in approximate])
            # Scores apart by more than float rounding: the very same ids.
            if min(a["score"] - b["score"] for a, b in zip(exact, exact[1:])) > 1e-5:
                assert [r["id"] for r in approximate] == [r["id"] for r in exact]


# ------------------------------------------------------- 3. image + modification text
def test_image_and_text_queries_rank_like_compose(api, trained, fashioniq, fashioniq_index):
    folder, triplets = fashioniq
    index = SearchIndex(fashioniq_index)
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
    asins = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    assert [item["id"] for item in index.items] == asins
    gallery = api.encode_images(paths)  # independently of the index: by path, one batch
    for candidate, target, caption in triplets:
        reference = os.path.join(folder, f"{candidate}.png")
        scores = (api.compose([reference], [caption]) @ gallery.t())[0]
        answer = run_query(api, index, caption, reference=reference, top_k=len(index),
                           include_reference=True)
        assert len(answer["results"]) == len(asins)
        assert_same_ranking([r["id"] for r in answer["results"]], asins, scores,
                            [r["score"] for r in answer["results"]])
        # By default the reference itself (a catalog item) is left out of its results.
        answer = run_query(api, index, caption, reference=candidate, top_k=10)
        assert answer["query"]["reference_id"] == candidate
        others = [asin != candidate for asin in asins]
        assert candidate not in [r["id"] for r in answer["results"]]
        assert_same_ranking([r["id"] for r in answer["results"]],
                            [a for a, o in zip(asins, others) if o], scores[torch.tensor(others)],
                            [r["score"] for r in answer["results"]])

    candidate, _, caption = triplets[0]
    printed, _ = search_json(["query", "--index", fashioniq_index, "--checkpoint", trained[1],
                              "--image", os.path.join(folder, f"{candidate}.png"),
                              "--text", caption, "--top-k", "5"])
    assert len(printed["results"]) == 5
    others = [asin != candidate for asin in asins]
    scores = (api.compose([os.path.join(folder, f"{candidate}.png")], [caption])
              @ gallery.t())[0]
    assert_same_ranking([r["id"] for r in printed["results"]],
                        [a for a, o in zip(asins, others) if o], scores[torch.tensor(others)],
                        [r["score"] for r in printed["results"]])


# --------------------------------------------------------------------------- 4. resume
def test_indexing_resumes_and_equals_a_one_shot_index(api, trained, fashioniq, tmp_path):
    source_folder, _ = fashioniq
    names = sorted(os.listdir(source_folder))[:20]
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names[::2]:  # half now, the other half (interleaved in order) later
        shutil.copy(os.path.join(source_folder, name), folder / name)
    checkpoint = trained[1]

    def index(api_, out):
        source, items = folder_items(str(folder))
        return build_index(api_, source, items, str(out), checkpoint, batch_size=3,
                           chunk_size=4, log=quiet)

    counter = CountingApi(api)
    assert index(counter, tmp_path / "grown")["count"] == 10
    assert counter.images == 10
    for name in names[1::2]:
        shutil.copy(os.path.join(source_folder, name), folder / name)
    counter = CountingApi(api)
    summary = index(counter, tmp_path / "grown")
    assert (counter.images, summary["embedded"], summary["reused"], summary["count"]) == (
        10, 10, 10, 20)
    counter = CountingApi(api)
    assert index(counter, tmp_path / "grown")["embedded"] == 0 and counter.calls == 0

    # Interrupted (Ctrl-C) in its third chunk: the two finished chunks are kept and usable.
    interrupted = CountingApi(api, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        index(interrupted, tmp_path / "interrupted")
    assert interrupted.images == 8 and len(SearchIndex(str(tmp_path / "interrupted"))) == 8
    counter = CountingApi(api)
    index(counter, tmp_path / "interrupted")
    assert counter.images == 12

    one_shot = CountingApi(api)
    index(one_shot, tmp_path / "one_shot")
    assert one_shot.images == 20
    assert_same_index(str(tmp_path / "grown"), str(tmp_path / "one_shot"))
    assert_same_index(str(tmp_path / "interrupted"), str(tmp_path / "one_shot"))

    # A changed file is embedded again; a removed one leaves the index.
    shutil.copy(os.path.join(source_folder, names[0]), folder / names[2])
    os.utime(folder / names[2], ns=(1, 1))
    (folder / names[3]).unlink()
    counter = CountingApi(api)
    summary = index(counter, tmp_path / "grown")
    assert (counter.images, summary["count"], summary["dropped"]) == (1, 19, 1)
    grown = SearchIndex(str(tmp_path / "grown"))
    first, changed = grown.row_of[names[0][:-4]], grown.row_of[names[2][:-4]]
    assert torch.allclose(grown.embeddings[first], grown.embeddings[changed], atol=1e-5)

    # Another model's index is refused, naming both fingerprints.
    with pytest.raises(SearchError, match=f"{api.fingerprint}.*0123456789abcdef"):
        index(CountingApi(api, fingerprint="0123456789abcdef"), tmp_path / "one_shot")
    # ... and another source's.
    source, items = fashiongen_items(os.path.dirname(os.path.dirname(os.path.dirname(
        source_folder))), "val")
    with pytest.raises(SearchError, match="new --out folder"):
        build_index(api, source, items, str(tmp_path / "one_shot"), checkpoint, log=quiet)


def test_an_index_of_another_checkpoint_is_refused(trained, fashiongen_index, tmp_path):
    state = torch.load(trained[1], weights_only=True)
    other = tmp_path / "other.ckpt"
    torch.save(state, other)  # the same weights, other bytes: another fingerprint
    from mmf_fashionvil.inference import file_fingerprint

    ours, theirs = file_fingerprint(trained[1]), file_fingerprint(other)
    assert ours != theirs
    code, output = run_command([*SEARCH, "query", "--index", fashiongen_index, "--checkpoint",
                                str(other), "--text", "black dress"])
    assert code == 2, output[-4000:]
    assert ours in output and theirs in output and str(other) in output


# ----------------------------------------------------------------------- 5. web page
def chromium_driver(window=(1280, 1000)):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("the web page test needs Debian's chromium and chromedriver "
                    f"(found chromium={chromium}, chromedriver={chromedriver})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run",
                     f"--window-size={window[0]},{window[1]}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def wait_for_server(process, url, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}: "
                                 f"{process.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "api/items?limit=1", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"serve did not answer on {url} within {timeout} s")


def post_json(url, data):
    request = urllib.request.Request(url, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_the_search_page_in_a_headless_browser(
        api, trained, fashiongen_index, val_products, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium_driver()  # skips before the server starts when chromium is missing
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [*SEARCH, "serve", "--index", fashiongen_index, "--checkpoint", trained[1],
         "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    try:
        wait_for_server(server, url)
        index = SearchIndex(fashiongen_index)
        caption = entry_text(val_products[1])
        ids, scores = [item["id"] for item in index.items], scores_by_row(api, index, caption)

        # The JSON endpoint, and its errors.
        status, answer = post_json(url + "api/query", {"text": caption, "top_k": 6})
        assert status == 200 and len(answer["results"]) == 6
        assert_same_ranking([r["id"] for r in answer["results"]], ids, scores,
                            [r["score"] for r in answer["results"]])
        expected = answer["results"]
        assert all("path" not in r and r["thumbnail"].startswith("thumb/")
                   for r in answer["results"])
        status, answer = post_json(url + "api/query", {"text": "  "})
        assert status == 400 and "empty" in answer["error"]
        status, answer = post_json(url + "api/query", {"text": "red", "reference": "/etc/passwd"})
        assert status == 400 and "not an item id" in answer["error"]

        driver.get(url)
        wait = WebDriverWait(driver, 60)
        # The reference chooser lists the catalog (plus its "none" entry).
        wait.until(lambda d: len(Select(d.find_element(By.ID, "reference")).options)
                   == len(index) + 1)
        driver.find_element(By.ID, "text").send_keys(caption)
        top_k = driver.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys("6")
        driver.find_element(By.ID, "search").click()
        results = driver.find_element(By.ID, "results")
        wait.until(lambda d: results.get_attribute("data-state") == "done")
        cards = results.find_elements(By.CLASS_NAME, "result")
        assert len(cards) == 6
        assert [c.get_attribute("data-id") for c in cards] == [r["id"] for r in expected]
        assert cards[0].find_element(By.CLASS_NAME, "id").text == expected[0]["id"]
        assert_same_ranking([c.get_attribute("data-id") for c in cards], ids, scores)
        # Every thumbnail loaded.
        wait.until(lambda d: all(d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            for image in results.find_elements(By.TAG_NAME, "img")))
        screenshot = tmp_path / "search_page.png"
        assert driver.save_screenshot(str(screenshot))

        # The first result as the reference, changed by a text: it leaves its own results.
        cards[0].find_element(By.CLASS_NAME, "use").click()
        assert Select(driver.find_element(By.ID, "reference")).first_selected_option \
            .get_attribute("value") == expected[0]["id"]
        text = driver.find_element(By.ID, "text")
        text.clear()
        text.send_keys("in black instead of red")
        driver.find_element(By.ID, "search").click()
        wait.until(lambda d: results.get_attribute("data-state") == "done"
                   and expected[0]["id"] not in [c.get_attribute("data-id") for c in
                                                 results.find_elements(By.CLASS_NAME, "result")])
        shown = [c.get_attribute("data-id") for c in results.find_elements(
            By.CLASS_NAME, "result")]
        assert len(shown) == 6
        reference_row = index.row_of[expected[0]["id"]]
        composed = scores_by_row(api, index, "in black instead of red", expected[0]["id"])
        keep = torch.arange(len(index)) != reference_row
        assert_same_ranking(shown, [i for i, k in zip(ids, keep) if k], composed[keep])
        driver.save_screenshot(str(tmp_path / "search_page_reference.png"))

        # An empty query shows the error instead of results.
        text.clear()
        driver.find_element(By.ID, "search").click()
        wait.until(lambda d: results.get_attribute("data-state") == "error")
        assert "empty" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    with open(screenshot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as image:
        image.load()
        assert image.width >= 800 and image.height >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200  # thumbnails and text, not blank
    assert screenshot.stat().st_size > 20_000


# ------------------------------------------------------------------------ 6. bad input
def test_bad_input_gets_clear_errors(api, trained, fashiongen_index, fashioniq, tmp_path):
    index = SearchIndex(fashiongen_index)
    for text in ("", "   "):
        with pytest.raises(SearchError, match="query text is empty"):
            run_query(api, index, text)
    with pytest.raises(SearchError, match="modification text is empty"):
        run_query(api, index, "", reference=index.items[0]["id"])
    with pytest.raises(SearchError, match="neither an image file nor an item id"):
        run_query(api, index, "red", reference="no-such-item")
    with pytest.raises(SearchError, match="at least 1"):
        run_query(api, index, "red", top_k=0)
    # K larger than the catalog: clamped to it, with a note saying so.
    answer = run_query(api, index, "red dress", top_k=1000)
    assert len(answer["results"]) == len(index)
    assert answer["note"] == (f"note: --top-k 1000 is more than the {len(index)} items that "
                              f"can be returned: showing all {len(index)}")
    code, output = run_command([*SEARCH, "query", "--index", fashiongen_index, "--text", "",
                                "--checkpoint", trained[1]])
    assert code == 2 and "error: the query text is empty" in output, output[-4000:]

    # Missing index files.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SearchError, match="index.json is missing"):
        SearchIndex(str(empty))
    broken = tmp_path / "broken_index"
    shutil.copytree(fashiongen_index, broken)
    (broken / "embeddings.safetensors").unlink()
    with pytest.raises(SearchError, match="embeddings.safetensors is missing"):
        SearchIndex(str(broken))
    with pytest.raises(SearchError, match="no such folder"):
        SearchIndex(str(tmp_path / "nowhere"))

    # Unreadable images in --images DIR: skipped, each named, counted; K > catalog clamped.
    source_folder, _ = fashioniq
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(os.listdir(source_folder))[:3]:
        shutil.copy(os.path.join(source_folder, name), folder / name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "sub").mkdir()
    (folder / "sub" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "folder_index"
    code, output = run_command([*SEARCH, "index", "--checkpoint", trained[1], "--images",
                                str(folder), "--out", str(out)])
    assert code == 0, output[-4000:]
    for path in (folder / "broken.png", folder / "sub" / "truncated.jpg"):
        assert f"warning: skipping an unreadable image: {path}" in output
        assert f"  skipped: {path}" in output
    assert "3 items (3 embedded now, 0 already embedded, 2 unreadable skipped)" in output
    assert len(SearchIndex(str(out))) == 3
    code, output = run_command([*SEARCH, "query", "--index", str(out), "--text", "red dress",
                                "--top-k", "10"])
    assert code == 0, output[-4000:]
    assert "note: --top-k 10 is more than the 3 items" in output
    assert len([line for line in output.splitlines() if line[:4].strip().isdigit()]) == 3

    # An --out folder that is not an index is left alone.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    source, items = folder_items(str(folder))
    with pytest.raises(SearchError, match="neither an index folder"):
        build_index(api, source, items, str(tmp_path / "busy"), trained[1], log=quiet)
