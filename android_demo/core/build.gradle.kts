// Pure Kotlin/JVM: no Android imports, so its tests run on any JVM (setup.sh runs them in CI without Gradle).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
    compilerOptions {
        allWarningsAsErrors.set(true)
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_1_8)
    }
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

dependencies {
    testImplementation(libs.junit)
}

tasks.test {
    // The golden vectors shared with the Python side (python -m sdk_tools.conformance tests/golden).
    systemProperty("memwall.golden", rootProject.projectDir.resolve("../tests/golden").absolutePath)
}
