// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// The part of Multicall3 billing uses (`aggregate3`), for RunGate's dev
/// chain, placed at Multicall3's canonical address (0xcA11…CA11, where it is
/// on Base and most chains): many calls in one transaction, each allowed to
/// fail on its own. Billing settles many EIP-3009 authorizations per
/// transaction through it; the token's `AuthorizationUsed` logs say which landed.
contract Multicall3 {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool success, bytes memory ret) = calls[i].target.call(calls[i].callData);
            if (!success && !calls[i].allowFailure) {
                assembly {
                    revert(add(ret, 0x20), mload(ret))
                }
            }
            returnData[i] = Result(success, ret);
        }
    }
}
