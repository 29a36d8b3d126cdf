"""Top-5 classes of photographs with a published weight and its own preprocessing.

    python -m senet_jax.predict --model se_resnet50.ra2_in1k photo.jpg holiday/ ...

Files and folders (every image directly inside) are read with PIL, transformed as
the weight was evaluated (the short side resized to size / crop_pct with its
interpolation, the central crop, its mean and std; `pretrained.eval_transform`)
and classified in batches of --batch-size. The weight downloads once and is
cached (see senet_jax/pretrained.py); with HF_HUB_OFFLINE=1 the cache alone serves.
"""
import argparse
import pathlib
import sys

import jax
import numpy as np

from senet_jax import pretrained
from senet_jax.errors import UserError
from senet_jax.models import normalize_images

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff'}


def image_paths(inputs):
    """The image files named, and those directly inside the folders named, in order."""
    paths = []
    for name in inputs:
        path = pathlib.Path(name)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f'No image file or folder at {name}.')
    if not paths:
        raise UserError(f'No images in {", ".join(inputs)}.')
    return paths


def top_k(logits: np.ndarray, names, k: int = 5):
    """[(name, probability)] * k per row, most probable first."""
    probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64), axis=-1))
    order = np.argsort(-probs, axis=-1)[:, :k]
    return [[(names[i], float(p[i])) for i in row] for p, row in zip(probs, order)]


def predict(tag: str, inputs, batch_size: int = 16, k: int = 5):
    """[(path, [(class name, probability)] * k)] for every image in `inputs`."""
    from PIL import Image, UnidentifiedImageError
    weight = pretrained.weight_config(tag)
    model, variables = pretrained.load_pretrained(tag)
    names = weight.label_names()
    apply = jax.jit(lambda v, x: model.apply(v, normalize_images(
        x, input_format=weight.input_format())))
    paths, results = image_paths(inputs), []
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        images = []
        for path in batch:
            try:
                with Image.open(path) as image:
                    images.append(pretrained.eval_transform(image, weight))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f'Cannot read {path} as an image ({e}).') from None
        x = np.stack(images + images[-1:] * (batch_size - len(images)))  # one compiled shape
        results += zip(batch, top_k(apply(variables, x)[:len(batch)], names, k))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m senet_jax.predict',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='se_resnet50.ra2_in1k',
                        help="a weight's tag or a model name (`senet_jax.list_pretrained()`)")
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--top', type=int, default=5)
    parser.add_argument('images', nargs='+', help='image files or folders')
    args = parser.parse_args(argv)
    try:
        for path, top in predict(args.model, args.images, args.batch_size, args.top):
            print(f'{path}: ' + ', '.join(f'{name} {p:.1%}' for name, p in top))
    except (UserError, ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
