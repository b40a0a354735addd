"""Package discovery for the four rooms (pyproject.toml holds everything else).

The rooms live at top level and install as one namespaced package: ``sdk/`` is ``ponder``,
``search/`` is ``ponder.search``, ``modalities/`` is ``ponder.modalities``, ``kernels/`` is
``ponder.kernels`` and ``demos/`` is ``ponder.demos``. Every package under a room is found
automatically, and each modality's ``zoo/`` folder ships as package data, so adding a modality
folder needs no edit here or in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOMS = {"ponder": "sdk", "ponder.search": "search", "ponder.modalities": "modalities",
         "ponder.kernels": "kernels", "ponder.demos": "demos"}

packages = []
for package, folder in ROOMS.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

# zoo weights, configs and cards (diffusers pipeline folders keep components in subfolders); demo job files
package_data = {p: ["zoo/**/*"] for p in packages if p.startswith("ponder.modalities.")}
package_data["ponder.demos"] = ["*.yaml"]

setup(package_dir=ROOMS, packages=packages, package_data=package_data)
