// The manifest's JSON Schema (exporters/schemas/manifest.v1.schema.json, compiled in at build time) checked as the
// Python loader checks it with jsonschema's Draft 2020-12 validator: every error collected, the first in the order
// the Python loader sorts them reported with jsonschema's location and wording, so both refuse the same manifests
// with the same line. Only the keywords the schema uses are implemented; a schema with another keyword is refused
// when the runtime starts reading (a test catches it the day the schema gains one).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace memwall {

struct SchemaError {
  std::string location;  // "/"-joined path of the offending value, "(root)" for the document
  std::string message;   // jsonschema's message, e.g. "'methods' is a required property"
};

// Every way `manifest` breaks the schema, sorted as the Python loader sorts them (by message).
std::vector<SchemaError> schema_errors(const nlohmann::json& manifest);

}  // namespace memwall
