"""Where each corpus's files come from and where they go.

Annotation files are read from the builders' default YAMLs
(``build_info.annotations.<split>.{url, storage, md5, sha256}``), so the files a
builder expects and the files the downloader writes cannot drift apart. Images and
videos are listed here: public archives with the checksums that are published for them,
per-image crawls driven by an official index file, or - for corpora that cannot be
fetched automatically (licence forms, web crawls) - the exact manual steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavislike.common.suggest import did_you_mean
from lavislike.errors import ConfigError, DataError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "builders" / "configs"
CARD_DIR = "dataset_card"


@dataclass(frozen=True)
class Resource:
    """One file to fetch; an archive when ``extract_to`` is set.

    ``storage`` and ``extract_to`` are relative to the download root (absolute allowed).
    ``splits`` lists the splits that need the file (empty: every split).
    """

    what: str
    url: str
    storage: str
    splits: tuple[str, ...] = ()
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract_to: str | None = None
    subdir: str | None = None


@dataclass(frozen=True)
class UrlList:
    """Many small files named in an index JSON (``index[images_key][*][url_key]``)."""

    what: str
    index_url: str
    index_storage: str
    dest: str
    splits: tuple[str, ...] = ()
    images_key: str = "images"
    url_key: str = "coco_url"
    name_key: str = "file_name"


@dataclass(frozen=True)
class Manual:
    """Files that must be obtained by hand; ``steps`` is printed with ``{root}`` filled in."""

    what: str
    storage: str
    steps: str
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Corpus:
    name: str
    config: str  # default YAML under builders/configs/
    media: tuple = field(default_factory=tuple)  # Resource | UrlList | Manual

    @property
    def card(self) -> str:
        return f"{CARD_DIR}/{self.name}.md"


_COCO = "http://images.cocodataset.org/zips"
# md5 of the COCO 2014 zips as published with the LAVIS download script; the others
# have no published digest and are checked against their length.
_COCO_TRAIN = Resource("images", f"{_COCO}/train2014.zip", "coco/download/train2014.zip", ("train",),
                       md5="0da8c0bd3d6becc4dcb32757491aca88", extract_to="coco/images")
_COCO_VAL = Resource("images", f"{_COCO}/val2014.zip", "coco/download/val2014.zip", ("train", "val", "test"),
                     md5="a3d79f5ed8d289b7a7554ce06a5782b3", extract_to="coco/images")
_COCO_TEST2015 = Resource("images", f"{_COCO}/test2015.zip", "coco/download/test2015.zip", ("test",),
                          extract_to="coco/images")

# Visual Genome images (both VG corpora read them; downloaded and unpacked once)
_VG_IMAGES = (
    Resource("images", "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
             "vg/download/images.zip", extract_to="vg/images"),
    Resource("images", "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
             "vg/download/images2.zip", extract_to="vg/images"),
)

_CRAWL = """\
{title} is distributed as a list of image URLs, not as images: crawl it with img2dataset
(pip install img2dataset), then turn the result into the LAVIS annotation file:
  {fetch_list}
  img2dataset --url_list {list_file} --input_format {fmt} --url_col {url_col} --caption_col {cap_col} \\
      --output_format files --output_folder {root}/{images} --image_size 384 --resize_mode keep_ratio \\
      --processes_count 16 --thread_count 64
  python -c "from lavislike.datasets.download import annotations_from_img2dataset as f; \\
      f('{root}/{images}', '{root}/{ann}')"
Expect 5-30% of the URLs to be dead; the annotation file lists only the images that arrived."""


def _crawl(title: str, images: str, list_file: str, fmt: str, fetch_list: str, ann: str,
           after: str = "") -> Manual:
    """A corpus published as a URL + caption list, crawled by hand into ``images``;
    ``after`` is appended to the printed steps."""
    steps = _CRAWL.format(title=title, list_file=list_file, fmt=fmt, fetch_list=fetch_list,
                          url_col="url", cap_col="caption", root="{root}", images=images, ann=ann)
    return Manual("images", images, steps + after)


_LAION = """\
LAION-400M cannot be downloaded as images: BLIP-2 used 115M of its images, re-captioned with
CapFilt, stored as webdataset shards (each sample: .jpg + .json with "caption", or a list of
captions to sample from). Build shards with img2dataset:
  pip install img2dataset
  # parquet metadata: https://huggingface.co/datasets/laion/laion400m (accept its terms first)
  img2dataset --url_list laion400m-meta/ --input_format parquet --url_col URL --caption_col TEXT \\
      --output_format webdataset --output_folder {root}/laion/shards --image_size 384 \\
      --resize_mode keep_ratio --processes_count 16 --thread_count 64
then point datasets.laion.build_info.storage at {root}/laion/shards/{00000..NNNNN}.tar.
To train on CapFilt captions, write the ranked captions into each sample's json as
"caption": ["best", "second"]: one is picked at random per step."""

_FLICKR = """\
Flickr30k images are released only after accepting the terms of use:
  1. fill in the form at https://shannon.cs.illinois.edu/DenotationGraph/ (or download the
     Kaggle copy: kaggle datasets download -d hsankesara/flickr-image-dataset)
  2. unpack so that the images lie at {root}/flickr30k/images/flickr30k-images/<id>.jpg
The annotation files are downloaded automatically: lavislike download flickr30k --what annotations"""

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("coco_caption", "coco_caption.yaml", (_COCO_TRAIN, _COCO_VAL)),
        Corpus("coco_retrieval", "coco_retrieval.yaml", (_COCO_TRAIN, _COCO_VAL)),
        Corpus("coco_vqa", "coco_vqa.yaml", (
            _COCO_TRAIN,
            Resource("images", _COCO_VAL.url, _COCO_VAL.storage, ("train", "val"), md5=_COCO_VAL.md5,
                     extract_to="coco/images"),
            _COCO_TEST2015)),
        Corpus("ok_vqa", "ok_vqa.yaml", (_COCO_TRAIN, _COCO_VAL)),
        Corpus("flickr30k", "flickr30k.yaml", (Manual("images", "flickr30k/images/flickr30k-images", _FLICKR),)),
        Corpus("gqa", "gqa.yaml", (
            Resource("images", "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
                     "gqa/download/images.zip", extract_to="gqa"),)),
        Corpus("nocaps", "nocaps.yaml", (
            UrlList("images", "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json",
                    "nocaps/download/nocaps_val_4500_captions.json", "nocaps/images/val", ("val",)),
            UrlList("images", "https://s3.amazonaws.com/nocaps/nocaps_test_image_info.json",
                    "nocaps/download/nocaps_test_image_info.json", "nocaps/images/test", ("test",)))),
        Corpus("vg_caption", "vg_caption.yaml", _VG_IMAGES),
        Corpus("vg_vqa", "vg_vqa.yaml", _VG_IMAGES),
        Corpus("conceptual_caption_3m", "conceptual_caption_3m.yaml", (_crawl(
            "Conceptual Captions 3M", "conceptual_caption/images", "Train_GCC-training.tsv", "tsv",
            "# Train_GCC-training.tsv from https://ai.google.com/research/ConceptualCaptions/download"
            " (add the header line 'caption\\turl')",
            "conceptual_caption/annotations/cc3m.json"),)),
        Corpus("conceptual_caption_12m", "conceptual_caption_12m.yaml", (_crawl(
            "Conceptual 12M", "conceptual_caption/images_12m", "cc12m.tsv", "tsv",
            "wget https://storage.googleapis.com/conceptual_12m/cc12m.tsv  # then add the header line 'url\\tcaption'",
            "conceptual_caption/annotations/cc12m.json"),)),
        Corpus("sbu_caption", "sbu_caption.yaml", (_crawl(
            "SBU Captions", "sbu_captions/images", "sbu.parquet", "parquet",
            "# sbu.parquet: python -c \"import pandas as pd, json; d=json.load(open("
            "'{root}/sbu_captions/annotations/sbu.json')); pd.DataFrame(d).to_parquet('sbu.parquet')\"",
            "sbu_captions/annotations/sbu_crawled.json",
            after="\nOr keep LAVIS's file names: the rows of sbu.json carry 'url' and 'image'; save each url to "
            "{root}/sbu_captions/images/<image>."),)),
        Corpus("laion", "laion.yaml", (Manual("images", "laion/shards", _LAION),)),
        Corpus("msrvtt_caption", "msrvtt_caption.yaml", (
            Resource("videos", "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
                     "msrvtt/download/MSRVTT.zip", extract_to="msrvtt/videos", subdir="MSRVTT/videos/all"),)),
        Corpus("msrvtt_qa", "msrvtt_qa.yaml", (
            Resource("videos", "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
                     "msrvtt/download/MSRVTT.zip", extract_to="msrvtt/videos", subdir="MSRVTT/videos/all"),)),
        Corpus("msvd_qa", "msvd_qa.yaml", (
            Resource("videos", "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar",
                     "msvd/download/YouTubeClips.tar", extract_to="msvd/videos", subdir="YouTubeClips"),)),
    ]
}


def corpus(name: str) -> Corpus:
    """The download table entry of ``name`` (ConfigError with a near match otherwise)."""
    if name not in CORPORA:
        raise ConfigError(
            f"no download recipe for dataset '{name}'.{did_you_mean(name, CORPORA)} "
            f"Available: {', '.join(sorted(CORPORA))}"
        )
    return CORPORA[name]


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def annotation_resources(name: str, config_dir: Path = CONFIG_DIR) -> list[Resource]:
    """Annotation files listed in the builder's default YAML, one Resource per file.

    Entries without a ``url`` (corpora whose annotation file is produced by a crawl) are
    left out here and covered by the corpus's manual steps.
    """
    entry = corpus(name)
    path = config_dir / entry.config
    if not path.is_file():
        raise DataError(f"default config of '{name}' is missing: {path}")
    cfg = OmegaConf.load(path)
    block = cfg.datasets[name] if "datasets" in cfg else cfg
    anns = block.get("build_info", {}).get("annotations", {}) or {}
    out: list[Resource] = []
    for split, info in anns.items():
        if not isinstance(info, DictConfig):
            continue
        urls, stores = _as_list(info.get("url")), _as_list(info.get("storage"))
        md5s, shas = _as_list(info.get("md5")), _as_list(info.get("sha256"))
        for i, (url, store) in enumerate(zip(urls, stores)):
            if not url or not str(url).startswith(("http://", "https://", "file:")):
                continue
            out.append(Resource(
                "annotations", str(url), str(store), (str(split),),
                md5=str(md5s[i]).strip() if i < len(md5s) and md5s[i] else None,
                sha256=str(shas[i]).strip() if i < len(shas) and shas[i] else None,
            ))
    return out
