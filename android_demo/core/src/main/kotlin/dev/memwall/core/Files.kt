package dev.memwall.core

import java.io.File
import java.io.FileOutputStream
import java.nio.channels.FileChannel
import java.nio.file.StandardOpenOption

/**
 * Writes [file] atomically: a temp file beside it, fsync, rename over, fsync of the directory. A crash (or an
 * out-of-memory kill) mid-write leaves the previous version, as the host runner's checkpoints do.
 */
fun atomicWrite(file: File, write: (FileOutputStream) -> Unit) {
    val dir = file.absoluteFile.parentFile
    dir.mkdirs()
    val tmp = File(dir, ".${file.name}.tmp")
    try {
        FileOutputStream(tmp).use { out ->
            write(out)
            out.flush()
            out.fd.sync()
        }
        if (!tmp.renameTo(file)) throw java.io.IOException("cannot rename $tmp to $file")
    } finally {
        tmp.delete()
    }
    try {
        FileChannel.open(dir.toPath(), StandardOpenOption.READ).use { it.force(true) }
    } catch (_: java.io.IOException) {
        // Some filesystems refuse to open a directory for fsync; the rename itself is still atomic.
    }
}

fun atomicWrite(file: File, bytes: ByteArray) = atomicWrite(file) { it.write(bytes) }
