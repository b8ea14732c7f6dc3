"""gigatok_jax: GigaTok-style visual tokenizers and LlamaGen-style AR generators in JAX/Flax.

Lower bounds here; exact, tested pins in requirements.txt / requirements-test.txt
(which also pins the [tfds] extra). The default install has no TensorFlow: the tfds data path
(data.source='tfds', the ImageNet preparation) is the [tfds] extra.
"""

from setuptools import find_packages, setup

setup(
    name="gigatok_jax",
    version="0.1.0",
    description="GigaTok visual tokenizers and AR image generators in JAX/Flax NNX, TPU-first",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gigatok_jax", "gigatok_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml_collections>=1.1.0",
        "array_record>=0.8.6",
        "einops>=0.8.2",
        "numpy>=2.0",
        "pillow>=10.0",
        "scikit-image>=0.24",   # demo photographs ship inside it
        "scikit-learn>=1.5",    # demo photographs (china, flower) and digits
        "tqdm>=4.66",
        "tensorboard>=2.21",     # event-file protos (no TensorFlow) and the viewer
        "absl-py>=2.1",
        "safetensors>=0.4",
        "huggingface_hub>=2.4",  # hf:// weight sources (gigatok_jax/weights/download.py)
        "pooch>=1.9",            # https:// weight sources
        "gcsfs>=2026.10.1",      # gs:// workdirs and datasets through etils epath (fileio.py)
    ],
    extras_require={
        # lpips (LPIPS parity test) is installed with --no-deps: it requires torchvision, which does
        # not install beside the CPU torch build; the test supplies the VGG16 layout itself.
        "test": ["pytest>=9.0", "pytest-xdist>=3.5", "torch>=2.13", "transformers>=5.0"],
        "tpu": ["jax[tpu]>=0.10.2"],
        # data.source='tfds' and the ImageNet preparation (data.prepare_source='imagenet2012').
        "tfds": ["tensorflow-datasets>=4.9.10", "tensorflow-cpu>=2.21"],
    },
)
