"""Only what pyproject.toml cannot say: the recipes live in configs/ at the top of the checkout (where
the docs and commands name them) and ship inside the package as lightseg/recipes, so that an installed
lightseg finds them by name (`lightseg train mininet_211k_camvid`)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["lightseg", "lightseg.*"]) + ["lightseg.recipes"],
      package_dir={"lightseg.recipes": "configs"})
