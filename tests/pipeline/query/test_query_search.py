import io

import numpy as np
import pytest
from PIL import Image

from pipeline.query import QueryError, open_snapshot
from pipeline.query.search import query_terms, search
from pipeline.query.sql import connect
from pipeline.store import Output
from query_helpers import COLOURS, MODEL, ColourEncoder, archive_tasks, write_archive


@pytest.fixture
def find(con, archive, tmp_path):
    snapshot = open_snapshot(archive)
    return lambda **kw: search(con, snapshot, encoder=kw.pop("encoder", ColourEncoder()), cache_dir=tmp_path, **kw)


def _name(m):
    return m.uri.rsplit("/", 1)[-1]


def test_words_match_pictures_captions_and_summaries(find):
    top = find(text="a red car", k=3)
    assert (_name(top[0]), top[0].timestamp_s) == ("street.mp4", 0.0)
    assert set(top[0].signals) == {"visual", "caption", "summary"} and top[0].signals["visual"] > 0.99
    assert top[0].caption == "a red car parked on a street"
    assert top[0].transcript.startswith("the engine starts")
    # The other red keyframe comes next: it matches by colour and by one of the two words.
    assert (_name(top[1]), top[1].timestamp_s, top[1].signals["caption"]) == ("kitchen.mp4", 2.0, 0.5)
    assert top[0].score > top[1].score > top[2].score and len(top) == 3


def test_speech_alone_finds_its_moment(find):
    top = find(text="birds singing")[0]
    assert (_name(top), top.timestamp_s, top.frame_index) == ("street.mp4", 8.5, 200)
    assert top.signals["transcript"] == 1.0 and top.caption == "green trees in a park"
    assert "birds are singing" in top.transcript


def test_a_summary_timeline_item_places_the_match(find):
    top = find(text="dusk")[0]
    assert (_name(top), top.timestamp_s) == ("street.mp4", 8.0) and "summary" in top.signals


def test_search_by_image_returns_the_same_keyframe_first(find, con):
    jpeg, caption = con.execute("SELECT image, caption FROM keyframes WHERE caption LIKE 'blue%'").fetchone()
    top = find(image=Image.open(io.BytesIO(jpeg)), k=2)
    assert top[0].caption == caption and top[0].signals == {"visual": pytest.approx(1.0, abs=1e-4)}


def test_words_are_whole_and_case_insensitive():
    assert query_terms("A RED car, at Night!") == ["red", "car", "night"]
    assert query_terms("the") == ["the"]  # only stopwords: keep them rather than search nothing


def test_moments_without_words_or_image_are_refused(find):
    with pytest.raises(QueryError, match="nothing to search"):
        find(text="?!")
    with pytest.raises(QueryError, match="--k"):
        find(text="red", k=0)


def test_asking_for_a_model_that_did_not_embed_the_keyframes(find):
    with pytest.raises(QueryError, match=f"no keyframes were embedded with 'other:clip'; this output holds '{MODEL}'"):
        find(text="red", model="other:clip")


def test_an_encoder_of_another_dimension_is_refused(find):
    class Wide(ColourEncoder):
        def embed_texts(self, texts):
            return np.ones((len(texts), 16), np.float32) / 4

    with pytest.raises(QueryError, match="16-d vectors but the keyframes of 'test:colour' hold 8-d"):
        find(text="red", encoder=Wide())


def test_several_stored_models_need_a_choice(tmp_path):
    shards = archive_tasks()
    for t in shards[1]:
        t.models["embedding"] = "test:other"
    write_archive(Output(str(tmp_path)), shards)
    snapshot = open_snapshot(str(tmp_path))
    with connect(snapshot) as c:
        with pytest.raises(QueryError, match="several models, choose one with --model"):
            search(c, snapshot, text="red", encoder=ColourEncoder(), cache_dir=tmp_path)
        found = search(c, snapshot, text="red", model="test:other", encoder=ColourEncoder(), cache_dir=tmp_path)
    assert {_name(m) for m in found if "visual" in m.signals} == {"kitchen.mp4"}


def test_words_still_search_an_output_without_embeddings(tmp_path):
    shards = archive_tasks()
    for t in shards[0] + shards[1]:
        for f in t.frames:
            f.embedding = None
    write_archive(Output(str(tmp_path)), shards)
    snapshot = open_snapshot(str(tmp_path))
    with connect(snapshot) as c:
        top = search(c, snapshot, text="birds", encoder=ColourEncoder(), cache_dir=tmp_path)[0]
        assert top.signals == {"transcript": 1.0} and top.score == pytest.approx(1 / 3, abs=1e-3)  # 1 of 3 signals
        with pytest.raises(QueryError, match="no keyframe has an embedding"):
            search(c, snapshot, image=Image.new("RGB", (8, 8), COLOURS["red"]), encoder=ColourEncoder(), cache_dir=tmp_path)


def test_the_query_model_is_the_one_the_newest_commit_record_names():
    from pipeline.query.encoder import model_ref
    from schemas.commit import CommitRecord, ModelRef

    def record(ref, at):
        return CommitRecord(model_refs={"embedding": ModelRef(ref, name="org/clip", revision="r1")}, committed_at=at)

    newer, older = record("s3://models/clip", "2026-11-23T10:00:00+00:00"), record("org/clip", "2026-11-22T10:00:00+00:00")
    assert model_ref("org/clip", [newer, older]) == model_ref("org/clip", [older, newer]) == ("s3://models/clip", "r1")
    # Records without model_refs, or not naming it: the name the keyframes record, ``ref@revision``.
    assert model_ref("org/other@abc", [newer]) == ("org/other", "abc")
    assert model_ref("/models/a@b/clip", []) == ("/models/a@b/clip", None)
