"""Startup kits for a consortium: one per participant, with certificates for mutual TLS.

``PROJECT.toml`` names the coordinator's host, the sites and the admins; FLARE's provisioner
makes a root CA, signs a certificate per participant and writes the kits. They are moved to
``KITS_DIR/coordinator``, ``KITS_DIR/<site>`` and ``KITS_DIR/admin`` (one admin) or
``KITS_DIR/admin-<name>`` (several), each with a ``fedseg.json`` that says whose kit it is, so
``fedseg server``/``site``/``submit`` need no further arguments. The network timings that make
FLARE tolerate failing sites are written into each kit's local settings when its process starts
(``settings.py``).

Homomorphic encryption (``[privacy] homomorphic = true`` in ``PROJECT.toml``): provisioning also
makes one CKKS key (``privacy.homomorphic.make_keys``) and writes the secret context into every
site kit (``he_secret.tenseal``, owner-readable only) and only the public context, which can add
ciphertexts but not decrypt them, into the coordinator's kit (``he_public.tenseal``); admin kits get
neither. ``load_he_context`` reads them back and refuses a coordinator kit holding the secret key.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedseg.errors import UserError
from fedseg.tables import read_toml

KIT_FILE = "fedseg.json"
HE_SECRET_FILE = "he_secret.tenseal"
HE_PUBLIC_FILE = "he_public.tenseal"


@dataclass(frozen=True)
class Network:
    heartbeat_timeout_s: float = 60.0
    """A site silent this long is declared dead by the coordinator (FLARE's default: 600 s)."""
    heartbeat_interval_s: float = 5.0
    """How often a site tells the coordinator it is alive (FLARE's default: 10 s)."""
    task_poll_interval_s: float = 0.1
    """How soon an idle site asks again for work (FLARE's default: 2 s; the main per-round cost)."""
    dead_site_grace_s: float = 10.0
    """Once the coordinator finds a site's job gone, how long until it gives up the site's open task
    (FLARE's default: 60 s); the round then goes on without the site."""
    compression: bool = False
    """Gzip weights on the wire: smaller messages, but seconds of CPU per round for large models."""


@dataclass(frozen=True)
class Project:
    name: str
    host: str
    fl_port: int
    admin_port: int
    coordinator_org: str
    sites: dict[str, str]
    """Site name -> organisation."""
    admins: dict[str, str]
    """Admin e-mail -> organisation."""
    network: Network = field(default_factory=Network)
    homomorphic: bool = False
    """Write CKKS keys into the kits: the secret context to the sites, the public one to the coordinator."""


def load_project(path: Path) -> Project:
    """Read and check ``PROJECT.toml``; every error names the file and the key."""
    data = read_toml(Path(path), "project file")
    where = str(path)
    _known(data, {"name", "coordinator", "sites", "admins", "network", "privacy"}, where, "top level")
    coordinator = _table(data, "coordinator", where)
    _known(coordinator, {"host", "fl_port", "admin_port", "org"}, where, "[coordinator]")
    sites = {str(_need(s, "name", where, "[[sites]]")): str(s.get("org", "site")) for s in data.get("sites", [])}
    admins = {str(_need(a, "name", where, "[[admins]]")): str(a.get("org", "coordinator"))
              for a in data.get("admins", [])}
    if not sites:
        raise UserError(f"{where}: no [[sites]]; add one table per hospital, e.g. [[sites]] name = \"site-a\"")
    if not admins:
        raise UserError(f"{where}: no [[admins]]; add the researcher who submits runs, e.g. "
                        "[[admins]] name = \"you@lab.org\" (an e-mail address)")
    for admin in admins:
        if "@" not in admin:
            raise UserError(f"{where}: admin name '{admin}' must be an e-mail address (FLARE requires it)")
    for name in (*sites, *admins):
        if name in {"coordinator", "server", "admin"}:
            raise UserError(f"{where}: '{name}' is a reserved name; choose another site or admin name")
    _check_names(where, str(_need(coordinator, "host", where, "[coordinator]")),
                 str(coordinator.get("org", "coordinator")), sites, admins)
    network = _table(data, "network", where, required=False)
    _known(network, set(Network.__dataclass_fields__), where, "[network]")
    try:
        ports = (int(coordinator.get("fl_port", 8002)), int(coordinator.get("admin_port", 8003)))
    except (TypeError, ValueError):
        raise UserError(f"{where}: [coordinator] fl_port and admin_port must be integers") from None
    privacy = _table(data, "privacy", where, required=False)
    _known(privacy, {"homomorphic"}, where, "[privacy]")
    if not isinstance(privacy.get("homomorphic", False), bool):
        raise UserError(f"{where}: [privacy] homomorphic must be true or false")
    if ports[0] == ports[1]:
        raise UserError(f"{where}: [coordinator] fl_port and admin_port must differ, both are {ports[0]}")
    return Project(name=str(data.get("name", Path(path).stem)), host=str(_need(coordinator, "host", where,
                   "[coordinator]")), fl_port=ports[0], admin_port=ports[1],
                   coordinator_org=str(coordinator.get("org", "coordinator")), sites=sites, admins=admins,
                   network=Network(**network), homomorphic=privacy.get("homomorphic", False))


def provision(project: Project, out: Path) -> dict[str, Path]:
    """Write one startup kit per participant under ``out``; returns participant -> kit folder."""
    from nvflare.lighter.prov_utils import prepare_builders, prepare_packager
    from nvflare.lighter.provision import prepare_project
    from nvflare.lighter.provisioner import Provisioner

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; provision into a new folder (kits hold private keys: "
                        "never overwrite kits that were already handed out)")
    project_dict = _flare_project(project)
    with tempfile.TemporaryDirectory() as scratch:
        flare_project = prepare_project(project_dict)
        Provisioner(scratch, prepare_builders(project_dict), prepare_packager(project_dict)).provision(flare_project)
        produced = next(Path(scratch).glob("*/prod_*"))
        kits = {}
        kit_names = {project.host: "coordinator", **{s: s for s in project.sites},
                     **{a: "admin" if len(project.admins) == 1 else f"admin-{a}" for a in project.admins}}
        out.mkdir(parents=True, exist_ok=True)
        for participant, kit_name in kit_names.items():
            kit = out / kit_name
            shutil.move(str(produced / participant), kit)
            role = "server" if participant == project.host else "site" if participant in project.sites else "admin"
            org = (project.coordinator_org if role == "server" else project.sites.get(participant)
                   or project.admins.get(participant))
            info = {"project": project.name, "role": role, "name": participant, "org": org,
                    "network": project.network.__dict__}
            (kit / KIT_FILE).write_text(json.dumps(info, indent=2) + "\n")
            kits[kit_name] = kit
    if project.homomorphic:
        _write_he_keys(kits["coordinator"], [kits[site] for site in project.sites])
    return kits


def load_he_context(kit_dir: Path, secret: bool) -> bytes:
    """The serialized CKKS context in a kit: the secret one (a site's) or the public one (the
    coordinator's, which must not hold the secret key)."""
    from fedseg.privacy.homomorphic import HEError, is_secret

    path = Path(kit_dir) / (HE_SECRET_FILE if secret else HE_PUBLIC_FILE)
    if not path.is_file():
        raise UserError(f"{kit_dir} has no {path.name}: homomorphic encryption needs keys from provisioning; "
                        "add [privacy] homomorphic = true to PROJECT.toml, provision again (fedseg provision) "
                        "and hand out the new kits to every site and the coordinator")
    context = path.read_bytes()
    try:
        holds_secret = is_secret(context)
    except HEError as error:
        raise UserError(f"{path} is damaged or not fedseg's ({error}); provision the kits again") from None
    if holds_secret != secret:
        raise UserError(f"{path} holds the secret key; the coordinator must never have it: provision again and "
                        "delete this file" if holds_secret else f"{path} holds no secret key; provision again")
    return context


def _write_he_keys(coordinator: Path, sites: list[Path]) -> None:
    from fedseg.privacy.homomorphic import make_keys

    secret, public = make_keys()
    (coordinator / HE_PUBLIC_FILE).write_bytes(public)
    for kit in sites:
        path = kit / HE_SECRET_FILE
        path.touch(mode=0o600)
        path.write_bytes(secret)


@dataclass(frozen=True)
class Kit:
    root: Path
    project: str
    role: str
    name: str
    org: str
    network: Network

    @property
    def startup(self) -> Path:
        return self.root / "startup"


def read_kit(path: Path, role: str) -> Kit:
    """The kit at ``path``, checked to be a ``role`` kit made by ``fedseg provision``."""
    path = Path(path).resolve()
    info_file = path / KIT_FILE
    if not info_file.is_file():
        raise UserError(f"{path} is not a startup kit made by 'fedseg provision' (no {KIT_FILE}); "
                        "pass the folder 'fedseg provision' wrote for this participant")
    info: dict[str, Any] = json.loads(info_file.read_text())
    if info["role"] != role:
        raise UserError(f"{path} is the kit of {info['role']} '{info['name']}', not a {role} kit")
    return Kit(path, info["project"], info["role"], info["name"], info["org"], Network(**info["network"]))


def _flare_project(project: Project) -> dict[str, Any]:
    participants: list[dict[str, Any]] = [
        {"name": project.host, "type": "server", "org": project.coordinator_org,
         "fed_learn_port": project.fl_port, "admin_port": project.admin_port}]
    participants += [{"name": site, "type": "client", "org": org} for site, org in project.sites.items()]
    participants += [{"name": admin, "type": "admin", "org": org, "role": "project_admin"}
                     for admin, org in project.admins.items()]
    return {
        "api_version": 3, "name": project.name, "description": "fedseg consortium", "participants": participants,
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": "master_template.yml"}},
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }


def _check_names(where: str, host: str, org: str, sites: dict[str, str], admins: dict[str, str]) -> None:
    """FLARE's own rules for names (they end up in certificates), checked up front."""
    from nvflare.apis.utils.format_check import name_check

    entries = [(host, "server", "[coordinator] host"), (org, "org", "[coordinator] org")]
    entries += [(site, "client", "[[sites]] name") for site in sites]
    entries += [(admin, "admin", "[[admins]] name") for admin in admins]
    entries += [(o, "org", "org") for o in (*sites.values(), *admins.values())]
    for value, kind, key in entries:
        bad, reason = name_check(value, kind)
        if bad:
            raise UserError(f"{where}: {key} '{value}' is not allowed: {reason}")


def _table(data: dict, key: str, where: str, required: bool = True) -> dict:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] must be a table" + (f", e.g. [{key}] host = \"fl.hospital.org\""
                                                                if required else ""))
    return value


def _need(table: Any, key: str, where: str, section: str) -> Any:
    if not isinstance(table, dict) or key not in table:
        raise UserError(f"{where}: {section} needs '{key}'")
    return table[key]


def _known(table: dict, allowed: set[str], where: str, section: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise UserError(f"{where}: {section} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
