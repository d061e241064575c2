"""Geo-temporal search over a photo collection: which photos of a results GeoPackage match a place, a time window,
another photo or a text, ranked by cosine similarity in GT-Loc's joint space (README "Search").

Filters: the photo's point within radius_km of the place (haversine), inside a polygon layer, claimed local time
inside a range. The photo's point is its claimed place if any, else the predicted one (`point_source` 'point'),
or only the claimed / only the predicted place.

Scale: exact search (all similarities, numpy) up to `exact_max_rows` photos; above, a FAISS IVF-Flat inner-product
index whose nprobe is calibrated at build time until recall@10 against exact search reaches `target_recall`. It is
saved next to the GeoPackage as `<gpkg>.faiss`, keyed by model and the ordered sha256 list of the collection, and
rebuilt when either changes. A filter that leaves at most `exact_max_rows` photos is searched exactly, and so is a
query whose T vectors would make FAISS scan more than `ann_max_relative_scan` collections' worth of rows.

Modules, one job each:
    query        SearchConfig, TimeWindow, SearchQuery (and their from_params), local_wall_clock: what is asked
    knn          exact_top_k (+ _batch, recall_at_k, calibration_queries), AnnIndex: nearest neighbours
    collection   Collection, load_collection, write_results_gpkg, write_search_output: files read and written
    filters      filter_rows, inside_polygons, claimed_in_range: which photos may be returned
    searcher     CollectionSearch(gpkg, model_path).search(query): the above, in order
"""

from gtloc_engine.inference.search.collection import (RESULTS_LAYER, Collection, load_collection, write_results_gpkg,
                                                     write_search_output)
from gtloc_engine.inference.search.filters import claimed_in_range, filter_rows, inside_polygons
from gtloc_engine.inference.search.knn import (AnnIndex, calibration_queries, exact_top_k, exact_top_k_batch,
                                               recall_at_k)
from gtloc_engine.inference.search.query import (POINT_SOURCES, POOLINGS, SearchConfig, SearchQuery, TimeWindow,
                                                 local_wall_clock)
from gtloc_engine.inference.search.searcher import CollectionSearch

__all__ = ["AnnIndex", "Collection", "CollectionSearch", "POINT_SOURCES", "POOLINGS", "RESULTS_LAYER", "SearchConfig",
           "SearchQuery", "TimeWindow", "calibration_queries", "claimed_in_range", "exact_top_k", "exact_top_k_batch",
           "filter_rows", "inside_polygons", "load_collection", "local_wall_clock", "recall_at_k",
           "write_results_gpkg", "write_search_output"]
