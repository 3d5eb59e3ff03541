"""Packaging for mlprod: every requirement is declared once, in settings.ini."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]


def split_requirements(value):
    "One requirement a line when the value spans lines (markers hold spaces), else space-separated."
    value = value.strip()
    return [r.strip() for r in value.splitlines() if r.strip()] if "\n" in value else value.split()


extras = {key[: -len("_requirements")]: split_requirements(cfg[key])
          for key in cfg if key.endswith("_requirements") and key != "requirements" and cfg[key].strip()}
# `dev` is everything the test suite and the docs touch; the benchmarks' peers stay apart (`bench`).
extras["dev"] = sorted({r for name, reqs in extras.items() if name != "bench" for r in reqs})
extras["all"] = sorted({r for name, reqs in extras.items() if name not in ("dev", "bench") for r in reqs})

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=[cfg["lib_name"], f"{cfg['lib_name']}.*"]),
    include_package_data=True,
    package_data={cfg["lib_name"]: ["jobs/*.ipynb"]},
    install_requires=split_requirements(cfg["requirements"]),
    extras_require=extras,
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
