"""ContextLab Apps: the PageDSL, its versioned store, the Panel renderer, ER models, BPMN flows and the console."""
