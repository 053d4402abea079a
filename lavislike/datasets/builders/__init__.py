"""Builders of the real corpora, registered in ``DATASETS`` with their default YAMLs.

=======================  ===========================  =====================================
name                     splits                       BLIP-2 use
=======================  ===========================  =====================================
coco_caption             train / val / test           pre-training; caption fine-tune/eval
coco_retrieval           train / val / test           retrieval fine-tune / eval
flickr30k                train / val / test           zero-shot retrieval eval
coco_vqa                 train / val / test           VQAv2 fine-tune / eval
ok_vqa                   train / test                 zero-shot VQA eval
gqa                      train / val / test           zero-shot VQA eval (val = test-dev)
nocaps                   val / test                   zero-shot caption eval
vg_caption               train                        pre-training
vg_vqa                   train                        VQAv2 fine-tune (added QA pairs)
conceptual_caption_3m    train                        pre-training
conceptual_caption_12m   train                        pre-training
sbu_caption              train                        pre-training
laion                    train (stream)               pre-training (CapFilt captions)
msrvtt_caption           train / val / test           video captioning
msrvtt_qa, msvd_qa       train / val / test           video QA
own_caption, own_vqa,    yours (files, imagefolder,   fine-tuning on your own data
own_retrieval            `datasets`; val by ratio)    (``lavislike finetune``)
=======================  ===========================  =====================================

Default YAMLs live in ``builders/configs/``; every corpus has a card in ``dataset_card/``
and a download recipe in :mod:`lavislike.datasets.download`.
"""
from lavislike.datasets.builders import captions, laion, own_data, retrieval, video, vqa  # noqa: F401  (register)
