"""Which photos' surfaces the map draws: by default only the selected photo's sub-group (its credible regions and
likelihood rasters), so a batch's dozens of overlapping surfaces never cover the map at once; "show all" draws
every photo's.

The per-photo sub-groups sit in one "surfaces" group of the batch. With one photo shown that group is mutually
exclusive (QGIS's own layer-tree option), so ticking another photo's sub-group in the Layers panel switches too.
Selecting photos on the map or in the attribute table shows theirs; an empty selection keeps what is shown.

    attach(photos, surfaces_group)   follow the photos layer's selection (add_to_project calls it)
    reattach(project)                follow every gtloc batch of a project that was just read
    set_show_all(on, project)        every photo's surface (on) or only the selected photos' (off), all batches
    shown_photo_paths(surfaces_group)    the photo paths whose sub-groups are drawn
"""

from __future__ import annotations

from qgis.core import QgsLayerTreeGroup, QgsProject

from . import results_schema as rs
from .layers import KIND_PROPERTY, PHOTO_PATH_PROPERTY, SOURCE_PROPERTY, SURFACES_GROUP_PROPERTY

SHOW_ALL_PROPERTY = "gtloc/show_all"  # on a surfaces group: "1" while every photo's surface is drawn

_switches: dict[str, _Switch] = {}  # photos layer id -> its switch (kept referenced while the layer lives)


class _Switch:
    """Keeps one batch's surfaces group in step with its photos layer's selection."""

    def __init__(self, photos, group: QgsLayerTreeGroup):
        self.photos, self.group, self.layer_id = photos, group, photos.id()
        photos.selectionChanged.connect(self.update)
        photos.willBeDeleted.connect(self.detach)

    def detach(self) -> None:
        _switches.pop(self.layer_id, None)

    def update(self, *args) -> None:
        try:
            children = _photo_groups(self.group)
        except RuntimeError:  # the group was removed from the tree: nothing left to switch
            self.detach()
            return
        if _show_all(self.group):
            wanted = {child.customProperty(PHOTO_PATH_PROPERTY) for child in children}
        else:
            wanted = {feature[rs.PATH] for feature in self.photos.getSelectedFeatures()}
            if not wanted:
                return  # nothing selected: keep what is shown
        _show(self.group, children, wanted)


def attach(photos, surfaces_group: QgsLayerTreeGroup) -> None:
    """Show the first photo's surface now, then follow `photos`' selection."""
    children = _photo_groups(surfaces_group)
    if children:
        _show(surfaces_group, children, {children[0].customProperty(PHOTO_PATH_PROPERTY)})
    _switches[photos.id()] = _Switch(photos, surfaces_group)
    _switches[photos.id()].update()


def reattach(project: QgsProject | None = None) -> None:
    """Re-connect every gtloc batch of a project read from disk (switches do not survive a save)."""
    project = project or QgsProject.instance()
    for group in _surfaces_groups(project):
        photos = next((layer for layer in project.mapLayers().values()
                       if layer.customProperty(KIND_PROPERTY) == rs.PHOTOS_LAYER
                       and layer.customProperty(SOURCE_PROPERTY) == group.customProperty(SURFACES_GROUP_PROPERTY)
                       and layer.id() not in _switches), None)
        if photos is not None:
            _switches[photos.id()] = _Switch(photos, group)


def set_show_all(on: bool, project: QgsProject | None = None) -> None:
    """Every photo's surface in every batch (on), or back to only the selected photos' (the first when none)."""
    project = project or QgsProject.instance()
    for group in _surfaces_groups(project):
        group.setCustomProperty(SHOW_ALL_PROPERTY, "1" if on else "0")
        children = _photo_groups(group)
        if on:
            _show(group, children, {child.customProperty(PHOTO_PATH_PROPERTY) for child in children})
        elif children:
            _show(group, children, {children[0].customProperty(PHOTO_PATH_PROPERTY)})
    for switch in list(_switches.values()):
        switch.update()


def shown_photo_paths(surfaces_group: QgsLayerTreeGroup) -> set[str]:
    return {child.customProperty(PHOTO_PATH_PROPERTY) for child in _photo_groups(surfaces_group)
            if child.itemVisibilityChecked()}


def _show(group: QgsLayerTreeGroup, children: list[QgsLayerTreeGroup], wanted: set[str]) -> None:
    group.setIsMutuallyExclusive(False)  # first: an exclusive group would undo the ticks below
    for child in children:
        child.setItemVisibilityChecked(child.customProperty(PHOTO_PATH_PROPERTY) in wanted)
    shown = [i for i, child in enumerate(children) if child.itemVisibilityChecked()]
    if len(shown) == 1:
        group.setIsMutuallyExclusive(True, shown[0])
    group.setItemVisibilityChecked(True)


def _show_all(group: QgsLayerTreeGroup) -> bool:
    return group.customProperty(SHOW_ALL_PROPERTY) == "1"


def _photo_groups(group: QgsLayerTreeGroup) -> list[QgsLayerTreeGroup]:
    return [child for child in group.children()
            if isinstance(child, QgsLayerTreeGroup) and child.customProperty(PHOTO_PATH_PROPERTY)]


def _surfaces_groups(project: QgsProject) -> list[QgsLayerTreeGroup]:
    found = []

    def walk(node) -> None:
        for child in node.children():
            if isinstance(child, QgsLayerTreeGroup):
                if child.customProperty(SURFACES_GROUP_PROPERTY):
                    found.append(child)
                else:
                    walk(child)

    walk(project.layerTreeRoot())
    return found
