//! Capturing work issued to a device's stream into a CUDA graph, and what the graph holds.

use cudarc::driver::sys::{self, CUgraphNodeType, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::{driver_error, CudaBackend};
use crate::{Error, Result};

/// The kind of one node of a captured graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphNode {
    /// A kernel launch.
    Kernel,
    /// A memset.
    Memset,
    /// A copy between two device buffers (what a step may contain, e.g. the loss into its ring buffer).
    MemcpyDeviceToDevice,
    /// A copy from or to host memory (or an array).
    Memcpy,
    /// A stream-ordered allocation or free: what a training step must not contain.
    Alloc,
    /// Anything else (host callbacks, events, child graphs, ...), with the driver's type number.
    Other(u32),
}

/// A graph captured by [`CudaBackend::capture`]: replayable on the device's stream.
pub struct CapturedGraph {
    graph: CudaGraph,
}

impl CudaBackend {
    /// Runs `f` with this device's stream in thread-local capture mode and returns `f`'s result with the
    /// graph of the work it issued. A host synchronisation by the capturing thread inside `f` makes the
    /// capture fail (an error here); other threads may synchronise meanwhile (the checkpoint writer waits on
    /// its copy's event while the training thread recaptures a step: global mode would fail one of the two).
    /// Allocations do not fail but show as [`GraphNode::Alloc`] nodes. Everything issued to the device's one
    /// stream while `f` runs is captured, from any thread: work other threads launch on the same device
    /// meanwhile is recorded into this graph instead of running, so capture while nothing else launches.
    pub fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, CapturedGraph)> {
        const OP: &str = "capture";
        // cudarc records a per-buffer event around each launch for its multi-stream bookkeeping; those
        // records would enter the graph. All of this crate's work is on one stream, so they are not needed.
        // SAFETY: no other stream of this context is in use by the crate while capturing (one stream per
        // device); tracking is switched back on below.
        unsafe { self.ctx.disable_event_tracking() };
        let began = self
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
        let result = began.map_err(driver_error(OP)).and_then(|()| f());
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(driver_error(OP));
        // SAFETY: capture has ended; back to cudarc's default.
        unsafe { self.ctx.enable_event_tracking() };
        let value = result?;
        let graph = graph?.ok_or(Error::InvalidShape {
            op: OP,
            reason: "the capture recorded no work".into(),
        })?;
        Ok((value, CapturedGraph { graph }))
    }
}

/// Whether one side of a copy is device memory: a device pointer, or a unified pointer that the driver says
/// is device memory.
fn on_device(kind: sys::CUmemorytype, ptr: sys::CUdeviceptr) -> Result<bool> {
    match kind {
        sys::CUmemorytype::CU_MEMORYTYPE_DEVICE => Ok(true),
        sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED => {
            let mut t: u32 = 0;
            // SAFETY: MEMORY_TYPE writes one unsigned int (a CUmemorytype) into `t`.
            unsafe {
                sys::cuPointerGetAttribute(
                    (&mut t as *mut u32).cast(),
                    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                    ptr,
                )
            }
            .result()
            .map_err(driver_error("graph nodes"))?;
            Ok(t == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32)
        }
        _ => Ok(false),
    }
}

impl CapturedGraph {
    /// The kind of every node.
    pub fn nodes(&self) -> Result<Vec<GraphNode>> {
        const OP: &str = "graph nodes";
        let g = self.graph.cu_graph();
        let mut count = 0usize;
        // SAFETY: a null node array asks only for the count; `g` is a live graph owned by `self.graph`.
        unsafe { sys::cuGraphGetNodes(g, std::ptr::null_mut(), &mut count) }
            .result()
            .map_err(driver_error(OP))?;
        let mut nodes = vec![std::ptr::null_mut(); count];
        // SAFETY: `nodes` has room for the `count` nodes the driver reported.
        unsafe { sys::cuGraphGetNodes(g, nodes.as_mut_ptr(), &mut count) }
            .result()
            .map_err(driver_error(OP))?;
        nodes.truncate(count);
        nodes
            .into_iter()
            .map(|node| {
                let mut kind = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
                // SAFETY: `node` belongs to the live graph; `kind` is a valid place for the result.
                unsafe { sys::cuGraphNodeGetType(node, &mut kind) }
                    .result()
                    .map_err(driver_error(OP))?;
                Ok(match kind {
                    CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL => GraphNode::Kernel,
                    CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMSET => GraphNode::Memset,
                    CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMCPY => {
                        let mut p = std::mem::MaybeUninit::<sys::CUDA_MEMCPY3D>::uninit();
                        // SAFETY: `node` is a memcpy node of the live graph; the driver writes the whole
                        // parameter struct into `p` on success.
                        unsafe { sys::cuGraphMemcpyNodeGetParams(node, p.as_mut_ptr()) }
                            .result()
                            .map_err(driver_error(OP))?;
                        // SAFETY: the call above succeeded, so `p` is initialised.
                        let p = unsafe { p.assume_init() };
                        if on_device(p.srcMemoryType, p.srcDevice)?
                            && on_device(p.dstMemoryType, p.dstDevice)?
                        {
                            GraphNode::MemcpyDeviceToDevice
                        } else {
                            GraphNode::Memcpy
                        }
                    }
                    CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC
                    | CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE => GraphNode::Alloc,
                    other => GraphNode::Other(other as u32),
                })
            })
            .collect()
    }

    /// Replays the graph on the device's stream (asynchronously).
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(driver_error("graph replay"))
    }
}
