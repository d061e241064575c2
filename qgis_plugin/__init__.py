"""gtloc for QGIS: where and when was this photo taken? The plugin talks to the gtloc engine; it never imports it."""


def classFactory(iface):
    from .plugin import GtlocPlugin

    return GtlocPlugin(iface)
