"""Graph IR and DeepSeek-V2 MLA builders."""
