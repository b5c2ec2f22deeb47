import Foundation

/// A training checkpoint as sdk_tools/runner/checkpoint.py writes it: one safetensors file (8-byte little-endian
/// header length, a JSON header padded with spaces to 8 bytes, raw float32 tensors sorted by name), metadata
/// `format`, `version`, `steps`, `data_position`, `manifest_sha256`. The bytes equal the Python writer's, so a
/// checkpoint moves between the phone and the host runner in both directions.
public struct Checkpoint: Equatable {
    public var steps: Int
    public var dataPosition: Int
    public var manifestSHA256: String
    /// Trainable parameters by runtime name, optimizer state as `optimizer/<state>/<name>`.
    public var tensors: [String: (shape: [Int], values: [Float])]

    public init(steps: Int, dataPosition: Int, manifestSHA256: String, tensors: [String: (shape: [Int], values: [Float])]) {
        (self.steps, self.dataPosition, self.manifestSHA256, self.tensors) = (steps, dataPosition, manifestSHA256, tensors)
    }

    public static func == (a: Checkpoint, b: Checkpoint) -> Bool {
        a.steps == b.steps && a.dataPosition == b.dataPosition && a.manifestSHA256 == b.manifestSHA256
            && a.tensors.keys == b.tensors.keys
            && a.tensors.allSatisfy { b.tensors[$0.key]!.shape == $0.value.shape && b.tensors[$0.key]!.values == $0.value.values }
    }

    public func encoded() -> Data {
        let names = tensors.keys.sorted()
        let metadata = [
            ("format", "memwall.checkpoint"), ("version", "1"), ("steps", String(steps)),
            ("data_position", String(dataPosition)), ("manifest_sha256", manifestSHA256),
        ]
        // json.dumps(header, separators=(",", ":")): __metadata__ first, then the tensors in name order.
        var header = "{\"__metadata__\":{" + metadata.map { "\(quote($0.0)):\(quote($0.1))" }.joined(separator: ",") + "}"
        var offset = 0
        for name in names {
            let (shape, values) = tensors[name]!
            let size = values.count * 4
            header += ",\(quote(name)):{\"dtype\":\"F32\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],"
                + "\"data_offsets\":[\(offset),\(offset + size)]}"
            offset += size
        }
        header += "}"
        var headerBytes = Data(header.utf8)
        headerBytes.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - headerBytes.count % 8) % 8))
        var out = Data(capacity: 8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(headerBytes)
        for name in names {
            tensors[name]!.values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { out.append(contentsOf: $0) }
        }
        return out
    }

    /// Atomic save: temp file, fsync, rename, fsync of the directory; a crash mid-save leaves the previous file.
    public func save(to url: URL) throws {
        try AtomicFile.write(encoded(), to: url)
    }

    public static func load(from url: URL, manifestSHA256 expected: String) throws -> Checkpoint {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw MemwallError(.checkpoint, "no checkpoint at \(url.path); train without resume first")
        }
        let checkpoint = try decode(data, source: url.path)
        guard checkpoint.manifestSHA256 == expected else {
            throw MemwallError(.checkpoint, "checkpoint \(url.path) was saved for another bundle (manifest "
                + "\(checkpoint.manifestSHA256.prefix(12))..., this bundle is \(expected.prefix(12))...); start fresh")
        }
        return checkpoint
    }

    public static func decode(_ data: Data, source: String) throws -> Checkpoint {
        func corrupt(_ why: String) -> MemwallError {
            MemwallError(.checkpoint, "checkpoint \(source) is corrupt (\(why)); delete it and train again")
        }
        struct Entry: Decodable {
            let dtype: String
            let shape: [Int]
            let dataOffsets: [Int]
        }
        guard data.count >= 8 else { throw corrupt("shorter than its 8-byte header length") }
        let headerLength = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        guard headerLength <= UInt64(data.count - 8) else { throw corrupt("header length \(headerLength) past the end") }
        let headerData = data.subdata(in: data.startIndex + 8 ..< data.startIndex + 8 + Int(headerLength))
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        guard let header = try? decoder.decode([String: JSONValue].self, from: headerData),
              let metadata = header["__metadata__"]
        else { throw corrupt("the header is not a JSON object with __metadata__") }
        guard metadata["format"]?.string == "memwall.checkpoint" else {
            throw MemwallError(.checkpoint, "\(source) is not a memwall checkpoint")
        }
        guard let steps = metadata["steps"]?.string.flatMap({ Int($0) }),
              let position = metadata["data_position"]?.string.flatMap({ Int($0) }),
              let manifest = metadata["manifest_sha256"]?.string
        else { throw corrupt("metadata lacks steps, data_position or manifest_sha256") }
        let body = data.startIndex + 8 + Int(headerLength)
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (name, value) in header where name != "__metadata__" {
            guard let raw = try? JSONEncoder().encode(value), let entry = try? decoder.decode(Entry.self, from: raw),
                  entry.dtype == "F32", entry.dataOffsets.count == 2
            else { throw corrupt("tensor \(name) is not a float32 entry") }
            let (start, end) = (entry.dataOffsets[0], entry.dataOffsets[1])
            let numel = entry.shape.reduce(1, *)
            guard start >= 0, end - start == numel * 4, body + end <= data.endIndex else {
                throw corrupt("tensor \(name) offsets \(entry.dataOffsets) do not fit its shape or the file")
            }
            let values = data.subdata(in: body + start ..< body + end).withUnsafeBytes { raw in
                (0 ..< numel).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
            }
            tensors[name] = (entry.shape, values)
        }
        return Checkpoint(steps: steps, dataPosition: position, manifestSHA256: manifest, tensors: tensors)
    }
}

private func quote(_ s: String) -> String {
    // json.dumps's ensure_ascii form; names and metadata are ASCII in practice, escape the rest the same way.
    var out = "\""
    for unit in s.utf16 {
        switch unit {
        case 0x22: out += "\\\""
        case 0x5C: out += "\\\\"
        case 0x20 ..< 0x7F: out.append(Character(Unicode.Scalar(unit)!))
        default: out += String(format: "\\u%04x", unit)
        }
    }
    return out + "\""
}

/// Writes that a crash cannot leave half done (the checkpoint, the report queue, the run journal).
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL) throws {
        let directory = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let temp = directory.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
        do {
            guard FileManager.default.createFile(atPath: temp.path, contents: nil) else {
                throw MemwallError(.io, "cannot create \(temp.path); check free space and permissions")
            }
            let handle = try FileHandle(forWritingTo: temp)
            try handle.write(contentsOf: data)
            try handle.synchronize()
            try handle.close()
            guard rename(temp.path, url.path) == 0 else {
                throw MemwallError(.io, "cannot rename \(temp.path) to \(url.path) (errno \(errno))")
            }
        } catch {
            try? FileManager.default.removeItem(at: temp)
            throw error
        }
        let fd = open(directory.path, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}
